r"""Winograd F(2×2, 3×3) and F(4×4, 3×3) (`jmeta/models/winograd.py`) against XLA:CPU's direct
convolutions.

  taskset -c 0 python benchmarks/winograd_conv.py                  # one core, as one device
  taskset -c 0 python benchmarks/winograd_conv.py --images_per_chunk=5,15,25,75   # chunk sweep

One JSON line per (images b, spatial size hw, channels c) — Conv4's 3×3 blocks on 28×28 inputs
with 64 channels (support and query sets), and 32-channel and smaller-image rows around
`layers.WINOGRAD_MIN_CHANNELS` / `WINOGRAD_MIN_SIZE`: median ms of 50 jitted calls of the
forward convolution (`fwd_*_ms`) and the weight gradient (`wg_*_ms`), each computed directly
(`direct`: XLA's convolution; the weight gradient as the library computed it before Winograd,
one convolution per `layers.CPU_WEIGHT_GRAD_IMAGES_PER_CHUNK` images, summed) and as F(2×2,
3×3) (`f2`) and F(4×4, 3×3) (`f4`; weight gradients summed over chunks of
`winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK` images), with each float32 result's max difference from
the float64 direct result relative to its largest entry (`*_err`). `winograd_applies` says
whether the library uses Winograd at that shape, `best_output_tile` which tile it uses. With
`--images_per_chunk`, instead: for the 75-image shapes where Winograd applies, the library's
Winograd weight gradient (`wg_ms`) summed over chunks of each given size, and its forward
convolution (`fwd_ms`) in chunks of each size, concatenated (the library runs the forward in one
piece). docs/PERFORMANCE.md, "Winograd convolutions".
"""
import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from conv_weight_grad import median_ms  # benchmarks/ is the script's directory
from experiments import xla_cpu
from jmeta.models import layers as L
from jmeta.models import winograd

SHAPES = [(5, 14, 64), (5, 7, 64), (5, 3, 64), (75, 14, 64), (75, 7, 64), (75, 3, 64),
          (75, 14, 32), (75, 7, 32), (75, 6, 64), (75, 5, 64), (75, 14, 16)]


def direct_conv(x, kernel, g):
  del g
  return L._conv_impl(x, kernel, size=(3, 3))  # pylint: disable=protected-access


def direct_weight_grad(x, kernel, g):
  del kernel
  return L._weight_grad_chunked(  # pylint: disable=protected-access
      x, g, size=(3, 3), images_per_chunk=L.CPU_WEIGHT_GRAD_IMAGES_PER_CHUNK)


def winograd_conv(x, kernel, g, *, output_tile):
  del g
  return winograd.conv3x3(x, kernel, output_tile=output_tile)


def winograd_weight_grad(x, kernel, g, *, output_tile):
  del kernel
  return winograd.conv3x3_weight_grad(x, g, output_tile=output_tile)


def operands(b, hw, c):
  keys = jax.random.split(jax.random.key(b * hw + c), 3)
  return (jax.random.normal(keys[0], (b, hw, hw, c)),
          jax.random.normal(keys[1], (3, 3, c, c)) / np.sqrt(9 * c),
          jax.random.normal(keys[2], (b, hw, hw, c)))


def relative_error(value, reference):
  return float(np.max(np.abs(np.asarray(value, np.float64) - reference))
               / np.max(np.abs(reference)))


def forward_in_chunks(x, kernel, g, *, images_per_chunk):
  del g
  return jnp.concatenate([winograd.conv3x3(x[start:start + images_per_chunk], kernel)
                          for start in range(0, x.shape[0], images_per_chunk)])


def weight_grad_in_chunks(x, kernel, g, *, images_per_chunk):
  del kernel
  return winograd.conv3x3_weight_grad(x, g, images_per_chunk=images_per_chunk)


def chunk_sweep(sizes):
  # A new partial per size: `jax.jit` caches traces by function, so one function patched to
  # another chunk size would be timed at the first size every time.
  for b, hw, c in SHAPES:
    args = operands(b, hw, c)
    applies = L._winograd_applies(args[0], c, (3, 3))  # pylint: disable=protected-access
    if b < max(sizes) or not applies:
      continue
    row = {"b": b, "hw": hw, "c": c, "fwd_ms": {}, "wg_ms": {}}
    for size in sizes:
      for key, fn in (("fwd_ms", forward_in_chunks), ("wg_ms", weight_grad_in_chunks)):
        row[key][size] = round(
            median_ms(functools.partial(fn, images_per_chunk=size), *args)[1], 3)
    print(json.dumps(row), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images_per_chunk", default="",
                      help="comma list of chunk sizes: run the chunk-size sweep instead")
  args = parser.parse_args()
  xla_cpu.add_fast_flags()  # the launchers' XLA flags, before JAX's backend starts
  if args.images_per_chunk:
    chunk_sweep([int(size) for size in args.images_per_chunk.split(",")])
    return
  for b, hw, c in SHAPES:
    x, kernel, g = operands(b, hw, c)
    with jax.enable_x64(True):
      exact = [np.asarray(fn(*(np.asarray(a, np.float64) for a in (x, kernel, g))))
               for fn in (direct_conv, direct_weight_grad)]
    applies = L._winograd_applies(x, c, (3, 3))  # pylint: disable=protected-access
    row = {"b": b, "hw": hw, "c": c, "mflop": 2 * b * hw * hw * 9 * c * c / 1e6,
           "winograd_applies": applies, "best_output_tile": winograd.best_output_tile(hw, hw)}
    methods = [("direct", direct_conv, direct_weight_grad)] + [
        (f"f{tile}", functools.partial(winograd_conv, output_tile=tile),
         functools.partial(winograd_weight_grad, output_tile=tile))
        for tile in winograd.OUTPUT_TILES]
    for name, conv, weight_grad in methods:
      for kind, fn, reference in (("fwd", conv, exact[0]), ("wg", weight_grad, exact[1])):
        value, ms = median_ms(fn, x, kernel, g)
        row[f"{kind}_{name}_ms"] = round(ms, 3)
        row[f"{kind}_{name}_err"] = relative_error(value, reference)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
