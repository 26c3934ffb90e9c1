r"""Conv4's first block on CPU: a one-channel 3×3 convolution to 64 channels, with and without the
2×2 max-pool that follows it, as XLA's library convolution and as `layers._conv_one_channel`'s
nine broadcast multiply-adds (which XLA can fuse into the pool, so the 64-channel output is not
written).

  taskset -c 0 python benchmarks/first_block_conv.py        # one core, as one device

One JSON line per image count (the peer workload's support and query sets, 28×28): median ms of
50 jitted calls of each form (`library_ms`, `multiply_adds_ms`, `library_pool_ms`,
`multiply_adds_pool_ms`) and the largest difference between the two forms' float32 outputs
(`max_abs_diff`). docs/PERFORMANCE.md, "The first block's convolution as multiply-adds".
"""
import argparse
import json
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import xla_cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", default="5,75", help="comma-separated image counts")
  parser.add_argument("--calls", type=int, default=50)
  args = parser.parse_args()
  xla_cpu.add_fast_flags()  # the launchers' XLA flags, before JAX's backend starts
  import jax
  from conv_weight_grad import median_ms  # benchmarks/ is the script's directory
  from jmeta.models import layers as L

  def library(x, kernel):
    return L._conv_impl(x, kernel, size=(3, 3))  # pylint: disable=protected-access

  def multiply_adds(x, kernel):
    return L._conv_one_channel(x, kernel, size=(3, 3))  # pylint: disable=protected-access

  for images in (int(n) for n in args.images.split(",")):
    keys = jax.random.split(jax.random.key(images), 2)
    x = jax.random.normal(keys[0], (images, 28, 28, 1))
    kernel = jax.random.normal(keys[1], (3, 3, 1, 64))
    row = {"benchmark": "first_block_conv", "images": images, "hw": 28, "out_channels": 64,
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    outputs = {}
    for name, conv in (("library", library), ("multiply_adds", multiply_adds)):
      outputs[name], row[f"{name}_ms"] = median_ms(conv, x, kernel, calls=args.calls)
      _, row[f"{name}_pool_ms"] = median_ms(lambda x, k, conv=conv: L.max_pool2x2(conv(x, k)),
                                            x, kernel, calls=args.calls)
    row["max_abs_diff"] = float(abs(outputs["library"] - outputs["multiply_adds"]).max())
    print(json.dumps({k: round(v, 3) if isinstance(v, float) and k.endswith("_ms") else v
                      for k, v in row.items()}), flush=True)


if __name__ == "__main__":
  main()
