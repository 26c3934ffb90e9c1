r"""Where the time of one peer-workload step goes: XLA:CPU's per-operation times from a profile.

  python benchmarks/profile_step.py                        # so, one device, 2 profiled steps
  python benchmarks/profile_step.py --variant bmg1 --top 30
  python benchmarks/profile_step.py --patch my_patch.py    # a setting, as in benchmarks/step_ab.py

Runs the peer harness's workload (`benchmarks/jmeta_peer.py`'s `Runner`, one JAX device so the
operations do not overlap), warms up, then records `--steps` steps with `jax.profiler.trace`
and sums the durations of the compiled step's operations (XLA:CPU thunks: `ynn_fusion.N` are
the convolutions and dots XLA hands to YNNPACK, `*_fusion.N` its own loop fusions). Prints JSON
lines: one per operation kind (`"kind"`, `"ms_per_step"`, `"share"` of the summed operation
time), then the `--top` single operations with their calls per step and output shape (from
the compiled HLO). Profiling slows the step (≈ 10-20% here); read shares, not absolute times.
docs/PERFORMANCE.md ("Max-pool's derivative").
"""
import argparse
import collections
import contextlib
import glob
import gzip
import json
import os
import re
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))


def operation_times(trace_file: str, num_steps: int):
  """Summed duration (ms per step) and calls per step of every XLA operation in the trace."""
  with gzip.open(trace_file) as f:
    events = json.load(f)["traceEvents"]
  total, calls = collections.Counter(), collections.Counter()
  for event in events:
    name = event.get("name", "")
    # Python frames start with "$"; ThunkExecutor::* are the executor's own spans, which
    # contain the operations.
    if event.get("ph") != "X" or name.startswith("$") or name.startswith("ThunkExecutor"):
      continue
    total[name] += event.get("dur", 0) / 1e3 / num_steps
    calls[name] += 1 / num_steps
  return total, calls


def profile(runner, args):
  """Prints the operation-kind and top-operation lines of `args.steps` profiled steps."""
  import jax  # pylint: disable=g-import-not-at-top
  for i in range(2):  # compile, then one steady step
    runner.step(i)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for i in range(args.steps):
        runner.step(i)
    trace_file, = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    total, calls = operation_times(trace_file, args.steps)
  hlo = runner.lowered_step().compile().as_text()
  summed = sum(total.values())
  by_kind = collections.Counter()
  for name, ms in total.items():
    by_kind[name.split(".")[0]] += ms
  for kind, ms in by_kind.most_common():
    print(json.dumps({"variant": args.variant, "kind": kind, "ms_per_step": round(ms, 1),
                      "share": round(ms / summed, 4)}))
  for name, ms in total.most_common(args.top):
    shape = re.search(r"  %" + re.escape(name) + r" = (\S+)", hlo)
    print(json.dumps({"variant": args.variant, "operation": name, "ms_per_step": round(ms, 1),
                      "calls_per_step": round(calls[name], 1),
                      "shape": shape.group(1) if shape else None}))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--peers_dir", default=os.path.join(_HERE, "..", "..", "shared", "peers"))
  parser.add_argument("--variant", default="so")
  parser.add_argument("--steps", type=int, default=2, help="profiled steps")
  parser.add_argument("--top", type=int, default=20, help="single operations to list")
  parser.add_argument("--patch", default="",
                      help="a module whose `patched()` context manager is entered while the step "
                           "compiles (benchmarks/step_ab.py)")
  args = parser.parse_args(argv)
  sys.path.insert(0, os.path.abspath(args.peers_dir))
  sys.path.insert(0, _HERE)
  import jmeta_peer  # pylint: disable=g-import-not-at-top
  import step_ab  # pylint: disable=g-import-not-at-top
  patch = step_ab.load_patch(args.patch) if args.patch else contextlib.nullcontext
  with patch():  # the step and the HLO read below are both compiled under the patch
    profile(jmeta_peer.Runner(args.variant, devices=1), args)


if __name__ == "__main__":
  main()
