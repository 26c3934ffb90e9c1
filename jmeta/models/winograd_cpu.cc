// Winograd F(4x4, 3x3) convolutions for XLA:CPU as two fused FFI kernels (jmeta/models/winograd_cpu.py).
//
// winograd.py computes the same thing as XLA operations: every transform writes its whole
// [36, tiles, channels] result to memory and the next operation reads it back, and the 36 small
// per-position matmuls are separate library calls. Here each block of a few tiles goes through
// input transform -> 36 matmuls -> output transform while it is in the core's cache:
//
//   JmetaWinogradConv         x [G, N, H, W, C], k [G, 3, 3, C, O] -> y [G, N, H, W, O]
//     y[g] = the 3x3 stride-1 'SAME' cross-correlation of x[g] with k[g];
//   JmetaWinogradWeightGrad   x [G, N, H, W, C], dy [G, N, H, W, O] -> dk [G, 3, 3, C, O]
//     dk[g] = its gradient in k[g] for the output cotangent dy[g].
//
// float32, C and O multiples of 16 (one 16-float vector: winograd_cpu.py checks before calling).
// Work is split over XLA's intra-op thread pool in blocks of tiles; the calling thread takes
// part, so the kernels also finish when the pool is busy.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// 16 floats: one AVX-512 register, two AVX ones (GCC/Clang vector extension, unaligned loads).
typedef float v16 __attribute__((vector_size(64), aligned(4)));
constexpr int kLanes = 16;

inline v16 Load(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void Store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
inline v16 Splat(float a) { return v16{a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }

// Rank-5 float32 operands and results: [groups, images, height, width, channels] and
// [groups, 3, 3, channels in, channels out].
using Array5 = ffi::Buffer<ffi::F32, 5>;
using Result5 = ffi::ResultBuffer<ffi::F32, 5>;

constexpr int kBlock = 4;       // output pixels per tile side (m)
constexpr int kTile = 6;        // input pixels per tile side (m + 2)
constexpr int kPositions = 36;  // kTile²

// The 1-D transforms (Lavin & Gray 2016; the same matrices as winograd.py's _TRANSFORMS[4]).
// Bᵀ: 6 input pixels -> 6 tile entries.
inline void InputRow(const v16* d, int stride, v16* out, int out_stride) {
  v16 d0 = d[0], d1 = d[stride], d2 = d[2 * stride], d3 = d[3 * stride], d4 = d[4 * stride],
      d5 = d[5 * stride];
  out[0] = 4.f * d0 - 5.f * d2 + d4;
  out[out_stride] = -4.f * (d1 + d2) + d3 + d4;
  out[2 * out_stride] = 4.f * (d1 - d2) - d3 + d4;
  out[3 * out_stride] = 2.f * (d3 - d1) - d2 + d4;
  out[4 * out_stride] = 2.f * (d1 - d3) - d2 + d4;
  out[5 * out_stride] = 4.f * d1 - 5.f * d3 + d5;
}

// A: 4 output-gradient pixels -> 6 tile entries.
inline void GradRow(const v16* g, int stride, v16* out, int out_stride) {
  v16 g0 = g[0], g1 = g[stride], g2 = g[2 * stride], g3 = g[3 * stride];
  v16 even = g0 + g2, odd = g1 + g3, even4 = g0 + 4.f * g2, odd4 = 2.f * g1 + 8.f * g3;
  out[0] = g0;
  out[out_stride] = even + odd;
  out[2 * out_stride] = even - odd;
  out[3 * out_stride] = even4 + odd4;
  out[4 * out_stride] = even4 - odd4;
  out[5 * out_stride] = g3;
}

// Aᵀ: 6 tile entries -> 4 output pixels.
inline void OutputRow(const v16* m, int stride, v16* out, int out_stride) {
  v16 m0 = m[0], m1 = m[stride], m2 = m[2 * stride], m3 = m[3 * stride], m4 = m[4 * stride],
      m5 = m[5 * stride];
  v16 s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
  out[0] = m0 + s12 + s34;
  out[out_stride] = d12 + 2.f * d34;
  out[2 * out_stride] = s12 + 4.f * s34;
  out[3 * out_stride] = d12 + 8.f * d34 + m5;
}

// G: 3 kernel taps -> 6 tile entries.
inline void KernelRow(const v16* k, int stride, v16* out, int out_stride) {
  v16 k0 = k[0], k1 = k[stride], k2 = k[2 * stride];
  v16 outer = k0 + k2, quarter = (1.f / 24.f) * k0 + (1.f / 6.f) * k2;
  out[0] = 0.25f * k0;
  out[out_stride] = (-1.f / 6.f) * (outer + k1);
  out[2 * out_stride] = (-1.f / 6.f) * (outer - k1);
  out[3 * out_stride] = quarter + (1.f / 12.f) * k1;
  out[4 * out_stride] = quarter - (1.f / 12.f) * k1;
  out[5 * out_stride] = k2;
}

// Gᵀ: 6 tile entries -> 3 kernel taps.
inline void KernelGradRow(const v16* m, int stride, v16* out, int out_stride) {
  v16 m0 = m[0], m1 = m[stride], m2 = m[2 * stride], m3 = m[3 * stride], m4 = m[4 * stride],
      m5 = m[5 * stride];
  v16 s12 = m1 + m2, s34 = m3 + m4;
  out[0] = 0.25f * m0 - (1.f / 6.f) * s12 + (1.f / 24.f) * s34;
  out[out_stride] = (1.f / 6.f) * (m2 - m1) + (1.f / 12.f) * (m3 - m4);
  out[2 * out_stride] = (1.f / 6.f) * (s34 - s12) + m5;
}

// C[rows, cols] (+)= A B with A(r, k) = a[r * a_row + k * a_k] and B [k_size, cols] row-major.
// R rows by NV vectors of columns are kept in registers (R·NV accumulators).
template <int R, int NV, bool kAccumulate>
inline void MicroKernel(int k_size, const float* a, int64_t a_row, int64_t a_k, const float* b,
                        int64_t ldb, float* c, int64_t ldc) {
  v16 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = kAccumulate ? Load(c + r * ldc + kLanes * v) : v16{};
  for (int k = 0; k < k_size; ++k) {
    v16 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = Load(b + k * ldb + kLanes * v);
    for (int r = 0; r < R; ++r) {
      v16 av = Splat(a[r * a_row + k * a_k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) Store(c + r * ldc + kLanes * v, acc[r][v]);
}

template <int R, bool kAccumulate>
inline void RowPanel(int cols, int k_size, const float* a, int64_t a_row, int64_t a_k,
                     const float* b, int64_t ldb, float* c, int64_t ldc) {
  int col = 0;
  for (; col + 4 * kLanes <= cols; col += 4 * kLanes)
    MicroKernel<R, 4, kAccumulate>(k_size, a, a_row, a_k, b + col, ldb, c + col, ldc);
  for (; col < cols; col += kLanes)
    MicroKernel<R, 1, kAccumulate>(k_size, a, a_row, a_k, b + col, ldb, c + col, ldc);
}

#ifdef __AVX512F__
constexpr int kPanelRows = 6;  // 24 of the 32 vector registers accumulate
#else
constexpr int kPanelRows = 3;  // 16-register ISAs: 24 of 32 half-width accumulators would spill
#endif

template <bool kAccumulate>
void Gemm(int rows, int cols, int k_size, const float* a, int64_t a_row, int64_t a_k,
          const float* b, int64_t ldb, float* c, int64_t ldc) {
  int r = 0;
  for (; r + kPanelRows <= rows; r += kPanelRows)
    RowPanel<kPanelRows, kAccumulate>(cols, k_size, a + r * a_row, a_row, a_k, b, ldb,
                                      c + r * ldc, ldc);
  const float* a_rest = a + r * a_row;
  float* c_rest = c + r * ldc;
  switch (rows - r) {
    case 5: RowPanel<5, kAccumulate>(cols, k_size, a_rest, a_row, a_k, b, ldb, c_rest, ldc); break;
    case 4: RowPanel<4, kAccumulate>(cols, k_size, a_rest, a_row, a_k, b, ldb, c_rest, ldc); break;
    case 3: RowPanel<3, kAccumulate>(cols, k_size, a_rest, a_row, a_k, b, ldb, c_rest, ldc); break;
    case 2: RowPanel<2, kAccumulate>(cols, k_size, a_rest, a_row, a_k, b, ldb, c_rest, ldc); break;
    case 1: RowPanel<1, kAccumulate>(cols, k_size, a_rest, a_row, a_k, b, ldb, c_rest, ldc); break;
    default: break;
  }
}

// Images of one group and how their tiles are numbered: tile = (image, tile row, tile column).
struct Geometry {
  int64_t images, height, width, tiles_h, tiles_w;

  Geometry(int64_t images, int64_t height, int64_t width)
      : images(images), height(height), width(width), tiles_h((height + kBlock - 1) / kBlock),
        tiles_w((width + kBlock - 1) / kBlock) {}
  int64_t tiles() const { return images * tiles_h * tiles_w; }
  int64_t pixels() const { return images * height * width; }
  // The pixel offset of a tile's block's top-left output pixel, and its row and column.
  void Locate(int64_t tile, int64_t* image_offset, int64_t* row, int64_t* col) const {
    int64_t per_image = tiles_h * tiles_w, rest = tile % per_image;
    *image_offset = (tile / per_image) * height * width;
    *row = (rest / tiles_w) * kBlock;
    *col = (rest % tiles_w) * kBlock;
  }
};

// Loads the 6x6 pixels (16 channels from c) of the tile whose top-left input pixel is (top,
// left): zero outside the image unless kInterior says the tile is inside it.
// The 2-D transform of a tile's kIn x kIn pixels (16 channels) by the 1-D transform kRow
// (kIn -> 6 entries), along the columns and then the rows, stored with the 36 entries one
// `channels` apart from `out` (tile-major).
template <int kIn, void (*kRow)(const v16*, int, v16*, int)>
inline void TransformAndStore(v16 (&d)[kIn][kIn], int64_t channels, float* out) {
  v16 rows[kTile][kIn];
  for (int j = 0; j < kIn; ++j) kRow(&d[0][j], kIn, &rows[0][j], kIn);
  for (int i = 0; i < kTile; ++i) {
    v16 transformed[kTile];
    kRow(&rows[i][0], 1, transformed, 1);
    for (int j = 0; j < kTile; ++j) Store(out + (i * kTile + j) * channels, transformed[j]);
  }
}

template <bool kInterior>
inline void LoadTile(const float* image, const Geometry& geo, int64_t channels, int64_t top,
                     int64_t left, int64_t c, v16 d[kTile][kTile]) {
  for (int i = 0; i < kTile; ++i) {
    const int64_t y = top + i;
    const bool row_inside = kInterior || (y >= 0 && y < geo.height);
    for (int j = 0; j < kTile; ++j) {
      const int64_t x = left + j;
      d[i][j] = (kInterior || (row_inside && x >= 0 && x < geo.width))
                    ? Load(image + (y * geo.width + x) * channels + c) : v16{};
    }
  }
}

// Bᵀ d B of tiles [first, first + count) of x (one group, C channels): v [count][36][C]
// (tile-major: each tile's 36 positions are written contiguously).
// Tile (i, j) reads input rows 4i - 1 ... 4i + 4 and columns 4j - 1 ... 4j + 4, zero outside.
void InputTiles(const float* x, const Geometry& geo, int64_t channels, int64_t first, int count,
                float* v) {
  for (int t = 0; t < count; ++t) {
    int64_t offset, row, col;
    geo.Locate(first + t, &offset, &row, &col);
    const int64_t top = row - 1, left = col - 1;
    const bool interior = top >= 0 && top + kTile <= geo.height && left >= 0 &&
                          left + kTile <= geo.width;
    for (int64_t c = 0; c < channels; c += kLanes) {
      v16 d[kTile][kTile];
      if (interior)
        LoadTile<true>(x + offset * channels, geo, channels, top, left, c, d);
      else
        LoadTile<false>(x + offset * channels, geo, channels, top, left, c, d);
      TransformAndStore<kTile, InputRow>(d, channels, v + t * kPositions * channels + c);
    }
  }
}

// A g Aᵀ of the 4x4 output-gradient blocks of tiles [first, first + count): [count][36][O].
void GradTiles(const float* dy, const Geometry& geo, int64_t channels, int64_t first, int count,
               float* gt) {
  for (int t = 0; t < count; ++t) {
    int64_t offset, row, col;
    geo.Locate(first + t, &offset, &row, &col);
    for (int64_t c = 0; c < channels; c += kLanes) {
      v16 g[kBlock][kBlock];
      for (int i = 0; i < kBlock; ++i)
        for (int j = 0; j < kBlock; ++j)
          g[i][j] = (row + i < geo.height && col + j < geo.width)
                        ? Load(dy + (offset + (row + i) * geo.width + col + j) * channels + c)
                        : v16{};
      TransformAndStore<kBlock, GradRow>(g, channels, gt + t * kPositions * channels + c);
    }
  }
}

// Aᵀ M A of m [count][36][O] into the tiles' output blocks of y (cut at the image's edge).
void OutputBlocks(const float* m, const Geometry& geo, int64_t channels, int64_t first, int count,
                  float* y) {
  for (int t = 0; t < count; ++t) {
    int64_t offset, row, col;
    geo.Locate(first + t, &offset, &row, &col);
    for (int64_t c = 0; c < channels; c += kLanes) {
      v16 in[kTile][kTile], rows[kBlock][kTile];
      for (int p = 0; p < kPositions; ++p)
        in[p / kTile][p % kTile] = Load(m + (t * kPositions + p) * channels + c);
      for (int j = 0; j < kTile; ++j) OutputRow(&in[0][j], kTile, &rows[0][j], kTile);
      for (int i = 0; i < kBlock && row + i < geo.height; ++i) {
        v16 out[kBlock];
        OutputRow(&rows[i][0], 1, out, 1);
        for (int j = 0; j < kBlock && col + j < geo.width; ++j)
          Store(y + (offset + (row + i) * geo.width + col + j) * channels + c, out[j]);
      }
    }
  }
}

// G k Gᵀ: k [3, 3, C, O] -> u [36][C][O].
void KernelTransform(const float* k, int64_t channels, int64_t out_channels, float* u) {
  int64_t plane = channels * out_channels;
  for (int64_t e = 0; e < plane; e += kLanes) {
    v16 taps[3][3], rows[kTile][3];
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) taps[a][b] = Load(k + (a * 3 + b) * plane + e);
    for (int b = 0; b < 3; ++b) KernelRow(&taps[0][b], 3, &rows[0][b], 3);
    for (int i = 0; i < kTile; ++i) {
      v16 out[kTile];
      KernelRow(&rows[i][0], 1, out, 1);
      for (int j = 0; j < kTile; ++j) Store(u + (i * kTile + j) * plane + e, out[j]);
    }
  }
}

// Gᵀ M G: m [36][C][O] -> dk [3, 3, C, O].
void KernelGrad(const float* m, int64_t channels, int64_t out_channels, float* dk) {
  int64_t plane = channels * out_channels;
  for (int64_t e = 0; e < plane; e += kLanes) {
    v16 in[kTile][kTile], rows[3][kTile];
    for (int p = 0; p < kPositions; ++p) in[p / kTile][p % kTile] = Load(m + p * plane + e);
    for (int j = 0; j < kTile; ++j) KernelGradRow(&in[0][j], kTile, &rows[0][j], kTile);
    for (int a = 0; a < 3; ++a) {
      v16 out[3];
      KernelGradRow(&rows[a][0], 1, out, 1);
      for (int b = 0; b < 3; ++b) Store(dk + (a * 3 + b) * plane + e, out[b]);
    }
  }
}

// How many threads a kernel call uses: the pool's, at most max_threads (0: no limit), at least 1.
int64_t Threads(ffi::ThreadPool& pool, int64_t max_threads) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return max_threads > 0 ? std::min(threads, max_threads) : threads;
}

// Runs body(i) for i in [0, items) on the calling thread and up to Threads() - 1 pool workers.
// Items are claimed from a shared counter; the caller returns once every item has finished.
// The shared state lives on the heap: a worker may start after all items are done.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t max_threads, int64_t items, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  // A worker that starts late finds no items left and never touches `body`.
  auto work = [state, items, body_ptr = &body]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < items;) {
      (*body_ptr)(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min(Threads(pool, max_threads), items) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
}

// Tiles per block: 36 positions × 18 tiles × 64 channels of transformed input (166 KB) and of
// products stay in a 2 MB L2 cache with the 590 KB transformed kernel; 18 rows are three full
// 6-row register panels.
constexpr int kConvBlockTiles = 18;
// The weight gradient's products sum over tiles: longer blocks amortise the accumulators' loads.
constexpr int kWeightGradBlockTiles = 48;

ffi::Error CheckChannels(int64_t channels, int64_t out_channels) {
  if (channels % kLanes || out_channels % kLanes)
    return ffi::Error::InvalidArgument("jmeta Winograd kernels need channel counts divisible by 16");
  return ffi::Error::Success();
}

ffi::Error Conv(ffi::ThreadPool pool, Array5 x, Array5 k, Result5 y, int64_t max_threads) {
  auto xd = x.dimensions(), kd = k.dimensions();
  const int64_t groups = xd[0], channels = xd[4], out_channels = kd[4];
  if (kd[0] != groups || kd[1] != 3 || kd[2] != 3 || kd[3] != channels)
    return ffi::Error::InvalidArgument("jmeta Winograd conv: kernel is not [G, 3, 3, C, O]");
  if (ffi::Error error = CheckChannels(channels, out_channels); error.failure()) return error;
  const Geometry geo(xd[1], xd[2], xd[3]);
  const int64_t plane = channels * out_channels;
  std::vector<float> u(groups * kPositions * plane);
  for (int64_t g = 0; g < groups; ++g)
    KernelTransform(k.typed_data() + g * 9 * plane, channels, out_channels, &u[g * kPositions * plane]);
  const int64_t blocks = (geo.tiles() + kConvBlockTiles - 1) / kConvBlockTiles;
  ParallelFor(pool, max_threads, groups * blocks, [&](int64_t item) {
    thread_local std::vector<float> v, m;
    v.resize(kPositions * kConvBlockTiles * channels);
    m.resize(kPositions * kConvBlockTiles * out_channels);
    const int64_t g = item / blocks, first = (item % blocks) * kConvBlockTiles;
    const int count = static_cast<int>(std::min<int64_t>(kConvBlockTiles, geo.tiles() - first));
    InputTiles(x.typed_data() + g * geo.pixels() * channels, geo, channels, first, count, v.data());
    for (int p = 0; p < kPositions; ++p)
      Gemm<false>(count, out_channels, channels, &v[p * channels], kPositions * channels, 1,
                  &u[(g * kPositions + p) * plane], out_channels, &m[p * out_channels],
                  kPositions * out_channels);
    OutputBlocks(m.data(), geo, out_channels, first, count,
                 y->typed_data() + g * geo.pixels() * out_channels);
  });
  return ffi::Error::Success();
}

ffi::Error WeightGrad(ffi::ThreadPool pool, Array5 x, Array5 dy, Result5 dk,
                      int64_t max_threads) {
  auto xd = x.dimensions(), dyd = dy.dimensions();
  const int64_t groups = xd[0], channels = xd[4], out_channels = dyd[4];
  for (int axis = 0; axis < 4; ++axis)
    if (dyd[axis] != xd[axis])
      return ffi::Error::InvalidArgument("jmeta Winograd weight gradient: x and dy differ in shape");
  if (ffi::Error error = CheckChannels(channels, out_channels); error.failure()) return error;
  const Geometry geo(xd[1], xd[2], xd[3]);
  const int64_t plane = channels * out_channels;
  // Each group's tiles in `parts` contiguous ranges of whole blocks, each summed into its own
  // [36][C][O] products, so the threads never write the same memory; then summed per group.
  const int64_t blocks = (geo.tiles() + kWeightGradBlockTiles - 1) / kWeightGradBlockTiles;
  const int64_t threads = Threads(pool, max_threads);
  const int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>(blocks, (threads + groups - 1) / groups));
  const int64_t blocks_per_part = (blocks + parts - 1) / parts;
  std::vector<float> products(groups * parts * kPositions * plane);
  ParallelFor(pool, max_threads, groups * parts, [&](int64_t item) {
    thread_local std::vector<float> v, gt;
    v.resize(kPositions * kWeightGradBlockTiles * channels);
    gt.resize(kPositions * kWeightGradBlockTiles * out_channels);
    const int64_t g = item / parts, part = item % parts;
    float* sum = &products[item * kPositions * plane];
    const int64_t begin = part * blocks_per_part * kWeightGradBlockTiles;
    const int64_t end = std::min(geo.tiles(), (part + 1) * blocks_per_part * kWeightGradBlockTiles);
    if (begin >= end) {
      std::fill(sum, sum + kPositions * plane, 0.f);
      return;
    }
    for (int64_t first = begin; first < end; first += kWeightGradBlockTiles) {
      const int count = static_cast<int>(std::min<int64_t>(kWeightGradBlockTiles, end - first));
      InputTiles(x.typed_data() + g * geo.pixels() * channels, geo, channels, first, count,
                 v.data());
      GradTiles(dy.typed_data() + g * geo.pixels() * out_channels, geo, out_channels, first,
                count, gt.data());
      for (int p = 0; p < kPositions; ++p) {
        const float* vp = &v[p * channels];
        const float* gp = &gt[p * out_channels];
        float* out = sum + p * plane;
        if (first == begin)
          Gemm<false>(channels, out_channels, count, vp, 1, kPositions * channels, gp,
                      kPositions * out_channels, out, out_channels);
        else
          Gemm<true>(channels, out_channels, count, vp, 1, kPositions * channels, gp,
                     kPositions * out_channels, out, out_channels);
      }
    }
  });
  for (int64_t g = 0; g < groups; ++g) {
    float* total = &products[g * parts * kPositions * plane];
    for (int64_t part = 1; part < parts; ++part) {
      const float* other = total + part * kPositions * plane;
      for (int64_t e = 0; e < kPositions * plane; ++e) total[e] += other[e];
    }
    KernelGrad(total, channels, out_channels, dk->typed_data() + g * 9 * plane);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JmetaWinogradConv, Conv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array5>()
                                  .Arg<Array5>()
                                  .Ret<Array5>()
                                  .Attr<int64_t>("max_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JmetaWinogradWeightGrad, WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array5>()
                                  .Arg<Array5>()
                                  .Ret<Array5>()
                                  .Attr<int64_t>("max_threads"));
