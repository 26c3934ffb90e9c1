"""Winograd's minimal filtering F(m×m, 3×3), m = 2 or 4: 3×3 stride-1 'SAME' convolutions (NHWC,
HWIO) and their weight gradients as (m+2)² matmuls over channels instead of 9 over shifted images.

Each m×m block of outputs comes from the (m+2)×(m+2) input tile around it: the tile and the
kernel are transformed (Bᵀ d B and G k Gᵀ), multiplied position by position (summed over input
channels: one matmul per position), and transformed back (Aᵀ M A). Per output block and channel
pair that is (m+2)² multiplies where the direct form needs 9m²: 16 for 36 with m = 2, 36 for 144
with m = 4 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016). The
weight gradient is the same map transposed in the kernel: Gᵀ [Σ_tiles (Bᵀ d B) ⊙ (A g Aᵀ)] G,
one matmul per position summed over tiles.

`layers.py` uses these as the XLA:CPU lowering of its convolution primitives, so every
derivative order gets them; docs/PERFORMANCE.md ("Winograd convolutions") has the measurements.
F(2×2, 3×3)'s transforms only add and halve; F(4×4, 3×3)'s multiply by up to 8 (and by 1/24 in
the kernel), so its float32 rounding error is larger (`tests/winograd_test.py` bounds both).
"""
import fractions
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

_Fraction = fractions.Fraction


class _Transforms(NamedTuple):
  """F(m×m, 3×3)'s matrices: input Bᵀ [(m+2), (m+2)], kernel G [(m+2), 3], output Aᵀ [m, (m+2)]."""
  input_t: Sequence[Sequence[_Fraction]]
  kernel: Sequence[Sequence[_Fraction]]
  output_t: Sequence[Sequence[_Fraction]]


def _fractions(rows):
  return tuple(tuple(_Fraction(value) for value in row) for row in rows)


# Interpolation points 0, ±1 (m = 2) and 0, ±1, ±2 (m = 4), plus the point at infinity.
_TRANSFORMS = {
    2: _Transforms(
        input_t=_fractions([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        kernel=_fractions([[1, 0, 0], ["1/2", "1/2", "1/2"], ["1/2", "-1/2", "1/2"], [0, 0, 1]]),
        output_t=_fractions([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: _Transforms(
        input_t=_fractions([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        kernel=_fractions([["1/4", 0, 0], ["-1/6", "-1/6", "-1/6"], ["-1/6", "1/6", "-1/6"],
                           ["1/24", "1/12", "1/6"], ["1/24", "-1/12", "1/6"], [0, 0, 1]]),
        output_t=_fractions([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                             [0, 1, -1, 8, -8, 1]])),
}
OUTPUT_TILES = tuple(_TRANSFORMS)

# The weight gradient sums its products over chunks of this many images: on XLA:CPU one product
# over all 75 query images' tiles (Conv4, 14×14) took 2.5× as long as five of 15 images
# (`benchmarks/winograd_conv.py --images_per_chunk=5,15,25,75`).
WEIGHT_GRAD_IMAGES_PER_CHUNK = 15


def _tiles(length, output_tile):
  """How many output tiles cover `length` pixels (the last may hang over the edge)."""
  return -(-length // output_tile)


def multiplies(height: int, width: int, output_tile: int) -> int:
  """Multiplies per channel pair and image of F(m×m, 3×3) on a height × width image (whole
  tiles: the last row and column of tiles may hang over the edge)."""
  return (output_tile + 2) ** 2 * _tiles(height, output_tile) * _tiles(width, output_tile)


def best_output_tile(height: int, width: int) -> int:
  """The output tile with the fewest multiplies at this image size; on a tie the smallest, whose
  transforms are cheaper (at 6×6 both need 144 and F(2×2, 3×3) was faster on XLA:CPU; at 7×7
  and 14×14 F(4×4, 3×3) needs 144 and 576 against 256 and 784 and was faster:
  benchmarks/winograd_conv.py)."""
  return min(OUTPUT_TILES, key=lambda tile: (multiplies(height, width, tile), tile))


def _resolve_output_tile(output_tile, x):
  """`output_tile` checked, or for None the best one for `x`'s image size."""
  if output_tile is None:
    return best_output_tile(x.shape[1], x.shape[2])
  if output_tile not in _TRANSFORMS:
    raise ValueError(f"winograd output_tile must be one of {OUTPUT_TILES} or None, "
                     f"got {output_tile}")
  return output_tile


def _transpose(matrix):
  return tuple(zip(*matrix))


def _combine(matrix, parts):
  """[Σ_j matrix[r][j] · parts[j] for each row r], skipping zeros and multiplying only by ≠ ±1."""
  combined = []
  for row in matrix:
    total = None
    for coefficient, part in zip(row, parts):
      if coefficient == 0:
        continue
      term = part if abs(coefficient) == 1 else part * float(abs(coefficient))
      if total is None:
        total = term if coefficient > 0 else -term
      else:
        total = total + term if coefficient > 0 else total - term
    combined.append(total)
  return combined


def _tile_counts(x, output_tile):
  return _tiles(x.shape[1], output_tile), _tiles(x.shape[2], output_tile)


def _windows(value, axis, tiles, stride, size):
  """Entry j of each of `tiles` windows of `size` entries, `stride` apart, along `axis` (zero
  past its end): `size` arrays, `tiles` long. Built from one reshape and slices (no strides)."""
  blocks = tiles + -(-size // stride) - 1
  padding = [(0, 0)] * value.ndim
  padding[axis] = (0, blocks * stride - value.shape[axis])
  split = jnp.pad(value, padding).reshape(
      value.shape[:axis] + (blocks, stride) + value.shape[axis + 1:])
  windows = []
  for j in range(size):
    block, offset = divmod(j, stride)
    entry = jax.lax.index_in_dim(split, offset, axis + 1, keepdims=False)
    windows.append(jax.lax.slice_in_dim(entry, block, block + tiles, axis=axis))
  return windows


def _transform_tiles(value, matrix, output_tile, tiles_h, tiles_w):
  """`matrix` applied to the rows, then the columns, of every window of `len(matrix[0])` pixels
  `output_tile` apart in `value` [N, H, W, C]: [len(matrix)², images·tiles, C]."""
  size, positions = len(matrix[0]), len(matrix)
  # Materialising the row transform first is 3× faster on XLA:CPU than one fusion of both.
  rows = jax.lax.optimization_barrier(
      jnp.stack(_combine(matrix, _windows(value, 1, tiles_h, output_tile, size))))
  tiles = jnp.stack(_combine(matrix, _windows(rows, 3, tiles_w, output_tile, size)), axis=1)
  return tiles.reshape(positions ** 2, value.shape[0] * tiles_h * tiles_w, value.shape[3])


def _input_tiles(x, output_tile):
  """Bᵀ d B of every (m+2)×(m+2) tile of the SAME-padded `x`: [(m+2)², images·tiles, C]."""
  padded = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))  # the far side: zeros from `_windows`
  return _transform_tiles(padded, _TRANSFORMS[output_tile].input_t, output_tile,
                          *_tile_counts(x, output_tile))


def _output_grad_tiles(g, output_tile):
  """A g Aᵀ of every m×m output block of `g` (zero past its edge): [(m+2)², blocks, O]."""
  return _transform_tiles(g, _transpose(_TRANSFORMS[output_tile].output_t), output_tile,
                          *_tile_counts(g, output_tile))


def _along(value, axis, matrix):
  parts = [jax.lax.index_in_dim(value, i, axis, keepdims=False) for i in range(len(matrix[0]))]
  return jnp.stack(_combine(matrix, parts), axis=axis)


def _kernel_transform(kernel, output_tile):
  """G k Gᵀ: [3, 3, C, O] -> [(m+2)², C, O]; per-group kernels [G, 3, 3, C, O] -> [(m+2)², G, C, O]."""
  if kernel.ndim == 5:  # the small kernel moved, not the tiles: positions lead, then groups
    kernel = jnp.moveaxis(kernel, 0, 2)
  matrix = _TRANSFORMS[output_tile].kernel
  return _along(_along(kernel, 0, matrix), 1, matrix).reshape((-1,) + kernel.shape[2:])


def _kernel_untransform(products, output_tile):
  """Gᵀ M G: [(m+2)², C, O] -> [3, 3, C, O]; [(m+2)², G, C, O] -> [G, 3, 3, C, O]."""
  matrix = _transpose(_TRANSFORMS[output_tile].kernel)
  positions = output_tile + 2
  square = products.reshape((positions, positions) + products.shape[1:])
  kernel = _along(_along(square, 0, matrix), 1, matrix)
  return jnp.moveaxis(kernel, 2, 0) if products.ndim == 4 else kernel


def _output_untile(products, x, output_tile):
  """Aᵀ M A: [(m+2)², images·tiles, O] -> the convolution of `x`, [images, height, width, O]."""
  images, height, width, _ = x.shape
  tiles_h, tiles_w = _tile_counts(x, output_tile)
  matrix, positions = _TRANSFORMS[output_tile].output_t, output_tile + 2
  m = products.reshape(positions, positions, images, tiles_h, tiles_w, -1)
  # [positions (column), images, tiles_h, m (row in block), tiles_w, O]
  rows = jax.lax.optimization_barrier(jnp.stack(_combine(matrix, list(m)), axis=3))
  blocks = jnp.stack(_combine(matrix, list(rows)), axis=4)
  return blocks.reshape(images, output_tile * tiles_h, output_tile * tiles_w, -1)[
      :, :height, :width]


def _images(x):
  """`x` [N, H, W, C] or per-group [G, N, H, W, C] as one batch of images [G·N, H, W, C]."""
  return x.reshape((-1,) + x.shape[-3:])


def _per_group_tiles(tiles, groups):
  """[positions, G·tiles, C] -> [positions, G, tiles, C] for `groups` (G,); unchanged for ()."""
  return tiles.reshape(tiles.shape[:1] + groups + (-1,) + tiles.shape[2:])


def conv3x3(x: jax.Array, kernel: jax.Array, *,
            output_tile: Optional[int] = None) -> jax.Array:
  """The 3×3 stride-1 'SAME' cross-correlation of `x` [N, H, W, C] with `kernel` [3, 3, C, O],
  as F(output_tile × output_tile, 3×3) (None: `best_output_tile` for the image size).

  Per-group kernels: `x` [G, N, H, W, C] with `kernel` [G, 3, 3, C, O] convolves each group's
  images with its own kernel, all groups' tiles in one batched matmul per position (a vmap over
  tasks with per-task kernels, without a loop over the tasks)."""
  if kernel.shape[-4:-2] != (3, 3):
    raise ValueError(f"winograd.conv3x3 needs a 3×3 kernel, got {kernel.shape[-4:-2]}")
  images = _images(x)
  output_tile = _resolve_output_tile(output_tile, images)
  tiles = _input_tiles(images, output_tile)
  products = jnp.einsum("t...pc,t...co->t...po", _per_group_tiles(tiles, x.shape[:-4]),
                        _kernel_transform(kernel, output_tile))
  products = products.reshape(tiles.shape[:2] + kernel.shape[-1:])
  return _output_untile(products, images, output_tile).reshape(x.shape[:-1] + kernel.shape[-1:])


def conv3x3_weight_grad(x: jax.Array, g: jax.Array, *, output_tile: Optional[int] = None,
                        images_per_chunk: int = WEIGHT_GRAD_IMAGES_PER_CHUNK) -> jax.Array:
  """The gradient of Σ conv3x3(x, k) · g in k: [3, 3, C, O] for x [N, H, W, C], g [N, H, W, O];
  per group, [G, 3, 3, C, O] for x [G, N, H, W, C], g [G, N, H, W, O]."""
  output_tile = _resolve_output_tile(output_tile, _images(x))
  groups = x.shape[:-4]
  products = 0
  for start in range(0, x.shape[-4], images_per_chunk):
    chunk = (Ellipsis, slice(start, start + images_per_chunk), slice(None), slice(None),
             slice(None))
    products += jnp.einsum(
        "t...pc,t...po->t...co",
        _per_group_tiles(_input_tiles(_images(x[chunk]), output_tile), groups),
        _per_group_tiles(_output_grad_tiles(_images(g[chunk]), output_tile), groups))
  return _kernel_untransform(products, output_tile)
