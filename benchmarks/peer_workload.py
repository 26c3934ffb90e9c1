r"""The peer harness's MAML/BMG workload run with jmeta alone: one JSON line per variant.

Exactly the harness workload (../shared/peers/workload.py: Conv4, 5-way 1-shot, 15 queries,
5 inner SGD steps at 0.4, meta-batch 16, Adam 1e-3, the 4 seeded meta-batches cycled, PyTorch's
initial parameters), stepped by `benchmarks/jmeta_peer.py`'s `Runner`, timed like the harness:
`--warmup` untimed steps (the first compiles), then the median of `--steps` timed steps.

  python benchmarks/peer_workload.py                       # so, fo, bmg1 with the default runner
  python benchmarks/peer_workload.py --variants all --steps 10
  python benchmarks/peer_workload.py --config plain        # the library's first path (im2col)
  python benchmarks/peer_workload.py --peers_dir /tmp/peers --config default,plain

Each variant runs in its own subprocess (fresh JAX backend, own CPU-device count, own peak RSS),
like the harness. Fields: impl, config, variant, ms_per_step (median), ms_min, ms_max,
tasks_per_s, compile_s (first call minus a steady step), num_compiles (XLA compilations during
warm-up and timed steps: 1 means one compile per shape), gflop_per_step (XLA's cost analysis of
ONE task's meta-gradient with every loop unrolled, x16 — the harness's method), achieved_gflops,
loss_first, loss_last, peak_rss_mb, devices, loadavg (os.getloadavg() after the timed steps).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)

CONFIGS = {
    "default": {},
    "plain": {"conv_impl": "matmul", "task_chunk_size": None, "devices": 1,
              "tune_allocator": False, "conv_bias": True, "xla_fast_flags": False},
    "native_1dev": {"devices": 1},
    "with_conv_bias": {"conv_bias": True},
    "fusion_emitters": {"xla_fast_flags": False},  # XLA:CPU's default loop-fusion emitters
    "matmul_1dev": {"conv_impl": "matmul", "task_chunk_size": None, "devices": 1},
}


def _import_peers(peers_dir):
  sys.path.insert(0, os.path.abspath(peers_dir))
  sys.path.insert(0, _HERE)
  import workload  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jmeta_peer  # pylint: disable=g-import-not-at-top
  return jmeta_peer


def count_flops(jmeta_peer, variant: str, conv_impl: str) -> float:
  """XLA's FLOP count of one outer step: ONE task's meta-gradient with the inner `lax.scan`
  unrolled (XLA counts a loop body once), times the meta-batch (the harness's method; the Adam
  update, ~2 MFLOP, is left out)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import workload as W
  from jmeta import models, types
  model = models.conv4.make(image_size=W.IMG_H, channels=W.IMG_C, width=W.HIDDEN,
                            num_blocks=W.N_BLOCKS, norm="batch", conv_impl=conv_impl)
  adapter, objective = jmeta_peer.build_objective(variant, model.apply)
  meta_params = adapter.init_meta(jmeta_peer.params_from_workload(W.init_params()))
  batch = W.make_batches(1)[0]
  task = types.Task(support=jnp.asarray(W.to_nhwc(batch["xs"][0])),
                    support_labels=jnp.asarray(batch["ys"][0], jnp.int32),
                    query=jnp.asarray(W.to_nhwc(batch["xq"][0])),
                    query_labels=jnp.asarray(batch["yq"][0], jnp.int32))
  scan = jax.lax.scan

  def unrolled_scan(f, init, xs=None, length=None, **kwargs):
    kwargs["unroll"] = True
    return scan(f, init, xs, length, **kwargs)

  jax.lax.scan = unrolled_scan
  try:
    step = jax.jit(jax.value_and_grad(lambda p: objective(p, jax.random.key(0), task)[0]))
    cost = step.lower(meta_params).compile().cost_analysis()
  finally:
    jax.lax.scan = scan
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"]) * W.META_BATCH


def run_one(peers_dir: str, config: str, variant: str, steps: int, warmup: int,
            flops: bool, after_build=None) -> dict:
  """Times one config and variant in this process. `after_build()`, if given, runs once the
  Runner exists (XLA flags and devices set) and before its first step traces the model."""
  jmeta_peer = _import_peers(peers_dir)
  import jax
  import workload as W
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: compiles.append(duration)
      if event == "/jax/core/compile/backend_compile_duration" else None)
  options = CONFIGS[config]
  t = time.perf_counter()
  runner = jmeta_peer.Runner(variant, **options)
  build_s = time.perf_counter() - t
  if after_build is not None:
    after_build()
  warm, losses = [], []
  for i in range(warmup):
    t = time.perf_counter()
    losses.append(runner.step(i))
    warm.append(time.perf_counter() - t)
  times = []
  for i in range(warmup, warmup + steps):
    t = time.perf_counter()
    losses.append(runner.step(i))
    times.append(time.perf_counter() - t)
  median = statistics.median(times)
  record = {
      "impl": "jmeta", "config": config, "options": {k: v for k, v in options.items()},
      "variant": variant, "meta_batch": W.META_BATCH, "devices": runner.devices,
      "warmup_steps": warmup, "timed_steps": steps,
      "ms_per_step": round(median * 1e3, 1), "ms_min": round(min(times) * 1e3, 1),
      "ms_max": round(max(times) * 1e3, 1), "tasks_per_s": round(W.META_BATCH / median, 3),
      "compile_s": round(warm[0] - median, 2) if warm else None, "build_s": round(build_s, 2),
      "num_compiles": len(compiles),
      "loss_first": losses[0], "loss_last": losses[-1],
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "step_s": [round(x, 4) for x in times],
  }
  if flops:
    gflop = count_flops(jmeta_peer, variant, "xla") / 1e9  # the same maths for every impl
    record["gflop_per_step"] = round(gflop, 2)
    record["achieved_gflops"] = round(gflop / median, 1)
  record["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  record["loadavg"] = [round(x, 2) for x in os.getloadavg()]
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--peers_dir", default=os.path.join(_REPO, "..", "shared", "peers"),
                      help="folder holding the harness's workload.py")
  parser.add_argument("--variants", default="so,fo,bmg1", help="comma list, or 'all'")
  parser.add_argument("--config", default="default", help=f"comma list of {sorted(CONFIGS)}")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--no_flops", action="store_true", help="skip the FLOP count (a compile)")
  parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if not os.path.isfile(os.path.join(args.peers_dir, "workload.py")):
    parser.error(f"{args.peers_dir}/workload.py not found; pass --peers_dir")
  if args.worker:
    print(json.dumps(run_one(args.peers_dir, args.worker[0], args.worker[1], args.steps,
                             args.warmup, not args.no_flops)), flush=True)
    return
  sys.path.insert(0, os.path.abspath(args.peers_dir))
  import workload as W  # pylint: disable=g-import-not-at-top
  variants = W.VARIANTS if args.variants == "all" else args.variants.split(",")
  for config in args.config.split(","):
    if config not in CONFIGS:
      parser.error(f"unknown config {config!r}; known: {sorted(CONFIGS)}")
    for variant in variants:
      command = [sys.executable, os.path.abspath(__file__), "--peers_dir", args.peers_dir,
                 "--steps", str(args.steps), "--warmup", str(args.warmup),
                 "--worker", config, variant] + (["--no_flops"] if args.no_flops else [])
      result = subprocess.run(command, capture_output=True, text=True, check=False)
      lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
      if result.returncode or not lines:
        print(json.dumps({"impl": "jmeta", "config": config, "variant": variant,
                          "error": result.stderr.strip().splitlines()[-3:]}), flush=True)
      else:
        print(lines[-1], flush=True)


if __name__ == "__main__":
  main()
