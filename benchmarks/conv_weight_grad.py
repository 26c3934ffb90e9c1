r"""The weight-gradient convolution of `conv_impl="native"` against alternatives, per layer shape.

  python benchmarks/conv_weight_grad.py
  python benchmarks/conv_weight_grad.py --images_per_chunk=2,5,10,25   # the chunk-size sweep

One JSON line per (images b, spatial size hw, input channels c) of Conv4 on 28x28 inputs, 64
output channels: median ms of 50 jitted calls of the forward convolution (`fwd_ms`), the
weight gradient as the library computes it (`wg_conv_ms`: on CPU one canonical XLA convolution
per chunk of `layers.CPU_WEIGHT_GRAD_IMAGES_PER_CHUNK` images, summed; for one input channel one
matmul of shifted images, since 2026-12-06; for ≥ 64 channels on ≥ 6×6 images Winograd's, since
session 18: benchmarks/winograd_conv.py compares those), as one convolution
over all images (`wg_one_conv_ms`, the library before 2026-11-30 and on other backends), as an
im2col matmul (`wg_im2col_ms`) and as nine shifted matmuls (`wg_shift_ms`), and the
alternatives' max relative differences to the library's result. With `--images_per_chunk`,
instead: per query-set shape, the weight gradient summed over chunks of each given size
(`wg_chunks_ms`, keyed by images per chunk) against one convolution. docs/PERFORMANCE.md.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.models import layers as L


# Conv4 on 28x28: (images, spatial size, input channels) of each block, support and query sets;
# last, a three-channel (RGB) first block, where the library keeps the convolutions: the rows
# compare them with the im2col matmul (`wg_im2col_ms`).
SHAPES = [(5, 28, 1), (5, 14, 64), (5, 7, 64), (5, 3, 64), (75, 28, 1), (75, 14, 64),
          (75, 7, 64), (75, 3, 64), (80, 14, 64), (5, 28, 3), (75, 28, 3)]


def _kernel_gradient(impl):
  """The gradient w.r.t. the kernel of `layers.conv2d(impl=impl)` for output cotangent g."""
  def gradient(x, kernel, g):
    return jax.vjp(lambda k: L.conv2d(x, k, impl=impl), kernel)[1](g)[0]
  return gradient


# The library's weight gradient ("native": the `_weight_grad_p` primitive, chunked on CPU) and
# the im2col path's ("matmul": patches^T @ g).
weight_grad_library = _kernel_gradient("native")
weight_grad_im2col = _kernel_gradient("matmul")


def weight_grad_one_convolution(x, kernel, g):
  """The primitive's generic lowering: one canonical convolution over all images."""
  return L._weight_grad_impl(x, g, size=kernel.shape[:2])  # pylint: disable=protected-access


def weight_grad_shifted(x, kernel, g):
  """Nine matmuls, one per kernel offset, without materialising the patch matrix."""
  _, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  parts = [jnp.einsum("bhwc,bhwo->co", padded[:, dy:dy + h, dx:dx + w, :], g)
           for dy in range(3) for dx in range(3)]
  return jnp.stack(parts).reshape(kernel.shape)


def forward(x, kernel, g):
  del g
  return L.conv2d(x, kernel, impl="native")


def median_ms(fn, *args, calls=50):
  fn = jax.jit(fn)
  out = fn(*args).block_until_ready()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - start)
  return out, 1e3 * float(np.median(times))


def chunk_sweep(sizes):
  for b, hw, c in [shape for shape in SHAPES if shape[0] > max(sizes)]:
    x = jax.random.normal(jax.random.key(0), (b, hw, hw, c))
    g = jax.random.normal(jax.random.key(1), (b, hw, hw, 64))
    kernel = jax.random.normal(jax.random.key(2), (3, 3, c, 64))
    _, one_conv_ms = median_ms(weight_grad_one_convolution, x, kernel, g)
    chunks_ms = {}
    for size in sizes:
      def chunked(x, kernel, g, size=size):
        return L._weight_grad_chunked(  # pylint: disable=protected-access
            x, g, size=kernel.shape[:2], images_per_chunk=size)
      chunks_ms[size] = round(median_ms(chunked, x, kernel, g)[1], 3)
    print(json.dumps({"b": b, "hw": hw, "c": c, "wg_one_conv_ms": round(one_conv_ms, 3),
                      "wg_chunks_ms": chunks_ms}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images_per_chunk", default="",
                      help="comma list of chunk sizes: run the chunk-size sweep instead")
  args = parser.parse_args()
  if args.images_per_chunk:
    chunk_sweep([int(size) for size in args.images_per_chunk.split(",")])
    return
  for b, hw, c in SHAPES:
    x = jax.random.normal(jax.random.key(0), (b, hw, hw, c))
    g = jax.random.normal(jax.random.key(1), (b, hw, hw, 64))
    kernel = jax.random.normal(jax.random.key(2), (3, 3, c, 64))
    reference, library_ms = median_ms(weight_grad_library, x, kernel, g)
    one_conv, one_conv_ms = median_ms(weight_grad_one_convolution, x, kernel, g)
    im2col, im2col_ms = median_ms(weight_grad_im2col, x, kernel, g)
    shifted, shifted_ms = median_ms(weight_grad_shifted, x, kernel, g)
    _, forward_ms = median_ms(forward, x, kernel, g)
    scale = float(jnp.max(jnp.abs(reference)))
    print(json.dumps({
        "b": b, "hw": hw, "c": c, "mflop": 2 * b * hw * hw * 9 * c * 64 / 1e6,
        "fwd_ms": round(forward_ms, 3), "wg_conv_ms": round(library_ms, 3),
        "wg_one_conv_ms": round(one_conv_ms, 3),
        "wg_im2col_ms": round(im2col_ms, 3), "wg_shift_ms": round(shifted_ms, 3),
        "err_one": float(jnp.max(jnp.abs(one_conv - reference))) / scale,
        "err_im": float(jnp.max(jnp.abs(im2col - reference))) / scale,
        "err_sh": float(jnp.max(jnp.abs(shifted - reference))) / scale}), flush=True)


if __name__ == "__main__":
  main()
