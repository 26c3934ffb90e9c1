"""Winograd's minimal filtering F(2×2, 3×3): 3×3 stride-1 'SAME' convolutions (NHWC, HWIO) and
their weight gradients as 16 matmuls over channels instead of 9 over shifted images.

Each 2×2 block of outputs comes from the 4×4 input tile around it: the tile and the kernel are
transformed (Bᵀ d B and G k Gᵀ, 4×4 each), multiplied position by position (summed over input
channels: one matmul per position), and transformed back (Aᵀ m A): 16 multiplies per output
block and channel pair where the direct form needs 36 (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016). The weight gradient is the same map transposed in
the kernel: Gᵀ [Σ_tiles (Bᵀ d B) ⊙ (A g Aᵀ)] G, one matmul per position summed over tiles.

`layers.py` uses these as the XLA:CPU lowering of its convolution primitives, so every
derivative order gets them; docs/PERFORMANCE.md ("Winograd convolutions") has the measurements.
The transforms only add and halve, so the float32 results differ from the direct convolution
by rounding (relative 1e-6 at Conv4's shapes).
"""
import jax
import jax.numpy as jnp

# The weight gradient sums its products over chunks of this many images: on XLA:CPU one product
# over all 75 query images' tiles (Conv4, 14×14) took 2.5× as long as five of 15 images
# (`benchmarks/winograd_conv.py --images_per_chunk=5,15,25,75`).
WEIGHT_GRAD_IMAGES_PER_CHUNK = 15


def _tile_counts(x):
  return (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2


def _even_odd(value, axis, pairs):
  """The even and odd entries along `axis` (length 2·pairs) as two arrays, without strides."""
  split = value.reshape(value.shape[:axis] + (pairs, 2) + value.shape[axis + 1:])
  return (jax.lax.index_in_dim(split, 0, axis + 1, keepdims=False),
          jax.lax.index_in_dim(split, 1, axis + 1, keepdims=False))


def _input_transform_1d(value, axis, tiles):
  """Bᵀ d along `axis` (length 2·tiles + 2) for every tile: four arrays, `tiles` long."""
  even, odd = _even_odd(value, axis, tiles + 1)

  def first(a):
    return jax.lax.slice_in_dim(a, 0, tiles, axis=axis)

  def second(a):
    return jax.lax.slice_in_dim(a, 1, tiles + 1, axis=axis)

  d0, d1, d2, d3 = first(even), first(odd), second(even), second(odd)
  return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _transform_tiles(padded, transform_1d, tiles_h, tiles_w):
  """`transform_1d` along the rows, then the columns, of every tile: [16, images·tiles, C]."""
  # Materialising the row transform first is 3× faster on XLA:CPU than one fusion of both.
  rows = jax.lax.optimization_barrier(jnp.stack(transform_1d(padded, 1, tiles_h)))
  tiles = jnp.stack(transform_1d(rows, 3, tiles_w), axis=1)
  return tiles.reshape(16, padded.shape[0] * tiles_h * tiles_w, padded.shape[3])


def _input_tiles(x):
  """Bᵀ d B of every 4×4 tile of the SAME-padded `x`: [16, images·tiles, C]."""
  tiles_h, tiles_w = _tile_counts(x)
  padded = jnp.pad(x, ((0, 0), (1, 2 * tiles_h + 1 - x.shape[1]), (1, 2 * tiles_w + 1 - x.shape[2]),
                       (0, 0)))
  return _transform_tiles(padded, _input_transform_1d, tiles_h, tiles_w)


def _output_grad_transform_1d(value, axis, tiles):
  """A g along `axis` (length 2·tiles) for every tile: four arrays, `tiles` long."""
  g0, g1 = _even_odd(value, axis, tiles)
  return [g0, g0 + g1, g0 - g1, -g1]


def _output_grad_tiles(g):
  """A g Aᵀ of every 2×2 output block of `g` (zero-padded to whole blocks): [16, blocks, O]."""
  tiles_h, tiles_w = _tile_counts(g)
  padded = jnp.pad(g, ((0, 0), (0, 2 * tiles_h - g.shape[1]), (0, 2 * tiles_w - g.shape[2]),
                       (0, 0)))
  return _transform_tiles(padded, _output_grad_transform_1d, tiles_h, tiles_w)


def _kernel_transform(kernel):
  """G k Gᵀ: [3, 3, C, O] -> [16, C, O]."""
  def along(k, axis):
    k0, k1, k2 = (jax.lax.index_in_dim(k, i, axis, keepdims=False) for i in range(3))
    return jnp.stack([k0, (k0 + k1 + k2) / 2, (k0 - k1 + k2) / 2, k2], axis=axis)

  transformed = along(along(kernel, 0), 1)
  return transformed.reshape((16,) + kernel.shape[2:])


def _kernel_untransform(products):
  """Gᵀ m G: [16, C, O] -> [3, 3, C, O]."""
  def along(m, axis):
    m0, m1, m2, m3 = (jax.lax.index_in_dim(m, i, axis, keepdims=False) for i in range(4))
    return jnp.stack([m0 + (m1 + m2) / 2, (m1 - m2) / 2, (m1 + m2) / 2 + m3], axis=axis)

  return along(along(products.reshape((4, 4) + products.shape[1:]), 0), 1)


def _output_untile(products, x):
  """Aᵀ m A: [16, images·tiles, O] -> the convolution of `x`, [images, height, width, O]."""
  images, height, width, _ = x.shape
  tiles_h, tiles_w = _tile_counts(x)
  m = products.reshape(4, 4, images, tiles_h, tiles_w, -1)
  # [4 (column position), images, tiles_h, 2 (row in block), tiles_w, O]
  rows = jax.lax.optimization_barrier(
      jnp.stack([m[0] + m[1] + m[2], m[1] - m[2] - m[3]], axis=3))
  blocks = jnp.stack([rows[0] + rows[1] + rows[2], rows[1] - rows[2] - rows[3]], axis=4)
  return blocks.reshape(images, 2 * tiles_h, 2 * tiles_w, -1)[:, :height, :width]


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The 3×3 stride-1 'SAME' cross-correlation of `x` [N, H, W, C] with `kernel` [3, 3, C, O]."""
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f"winograd.conv3x3 needs a 3×3 kernel, got {kernel.shape[:2]}")
  products = jnp.einsum("tpc,tco->tpo", _input_tiles(x), _kernel_transform(kernel))
  return _output_untile(products, x)


def conv3x3_weight_grad(x: jax.Array, g: jax.Array, *,
                        images_per_chunk: int = WEIGHT_GRAD_IMAGES_PER_CHUNK) -> jax.Array:
  """The gradient of Σ conv3x3(x, k) · g in k: [3, 3, C, O] for x [N, H, W, C], g [N, H, W, O]."""
  products = 0
  for start in range(0, x.shape[0], images_per_chunk):
    chunk = slice(start, start + images_per_chunk)
    products += jnp.einsum("tpc,tpo->tco", _input_tiles(x[chunk]), _output_grad_tiles(g[chunk]))
  return _kernel_untransform(products)
