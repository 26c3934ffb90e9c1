r"""What the layers between the convolutions cost in the peer workload's step: the same step with
batch norm, ReLU and/or max-pool swapped for near-free stand-ins.

  python benchmarks/layer_ablation.py                       # so; none, norm, norm+relu+pool
  python benchmarks/layer_ablation.py --variants so,fo,bmg1 --remove none,norm+relu+pool

Stand-ins: batch norm -> `x * scale + offset` (no statistics), ReLU -> identity, max-pool ->
the top-left pixel of each 2×2 window (a strided slice). The convolutions, their shapes and
derivatives, the inner loop and the optimiser are unchanged, so `norm+relu+pool` bounds from
below what the step can take with XLA:CPU's convolution kernels, whatever the other layers cost.
The network is a different one: only the times mean anything, not the losses. Each setting runs
in its own subprocess (the swaps are process-wide) with the plugin's defaults
(`benchmarks/jmeta_peer.py`: two devices, XLA flags, allocator). Prints one JSON line per
setting. docs/PERFORMANCE.md ("How far the step can go").
"""
import argparse
import json
import os
import sys

import meta_step  # the benchmarks' subprocess runner

_HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = ("norm", "relu", "pool")


def parse_removed(spec: str):
  removed = () if spec == "none" else tuple(spec.split("+"))
  unknown = sorted(set(removed) - set(LAYERS))
  if unknown:
    raise ValueError(f"--remove: {unknown} unknown; allowed: 'none' or a '+' list of {LAYERS}")
  return removed


def swap_layers(removed) -> None:
  """Replaces the named layers, process-wide, by their stand-ins."""
  import jax  # pylint: disable=g-import-not-at-top
  from jmeta.models import layers  # pylint: disable=g-import-not-at-top
  if "norm" in removed:
    layers.normalize = lambda x, scale, offset, **unused: x * scale + offset
    # Conv4's batch-norm path is the fused layer, which does not call `normalize`: its stand-in
    # looks up the (possibly swapped) ReLU and pooling when it runs.
    layers.conv_batch_norm_relu_max_pool = (
        lambda x, kernel, bias, scale, offset, *, impl="native", eps=1e-5: layers.max_pool2x2(
            jax.nn.relu(layers.conv2d(x, kernel, bias, impl=impl) * scale + offset)))
  if "relu" in removed:
    jax.nn.relu = lambda x: x
  if "pool" in removed:
    layers.max_pool2x2 = lambda x: x[:, :x.shape[1] // 2 * 2:2, :x.shape[2] // 2 * 2:2, :]


def run_one(peers_dir: str, variant: str, removed, steps: int, warmup: int) -> dict:
  """`peer_workload.run_one` of the plugin's default config, the layers swapped once the Runner
  has set the XLA flags and devices (before the first step traces the model)."""
  import peer_workload  # pylint: disable=g-import-not-at-top
  record = peer_workload.run_one(peers_dir, "default", variant, steps, warmup, flops=False,
                                 after_build=lambda: swap_layers(removed))
  record["removed"] = "+".join(removed) or "none"
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--peers_dir", default=os.path.join(_HERE, "..", "..", "shared", "peers"))
  parser.add_argument("--variants", default="so")
  parser.add_argument("--remove", default="none,norm,norm+relu+pool",
                      help="comma list of settings: 'none' or a '+' list of " + str(LAYERS))
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "REMOVED"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if not os.path.isfile(os.path.join(args.peers_dir, "workload.py")):
    parser.error(f"{args.peers_dir}/workload.py not found; pass --peers_dir")
  if args.worker:
    print(json.dumps(run_one(args.peers_dir, args.worker[0], parse_removed(args.worker[1]),
                             args.steps, args.warmup)), flush=True)
    return
  settings = args.remove.split(",")
  for setting in settings:
    try:
      parse_removed(setting)
    except ValueError as error:
      parser.error(str(error))
  for variant in args.variants.split(","):
    for setting in settings:
      for record in meta_step._subprocess_json(  # pylint: disable=protected-access
          [os.path.abspath(__file__), "--peers_dir", args.peers_dir, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--worker", variant, setting]):
        print(json.dumps(dict({"variant": variant, "removed": setting}, **record)), flush=True)


if __name__ == "__main__":
  main()
