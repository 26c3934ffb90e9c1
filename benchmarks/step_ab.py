r"""Several settings of the peer step compiled in ONE process, their steps alternated: one JSON line.

The machine's step times drift by ±20% within minutes, so two settings timed one after the other
(or in two processes) can differ by more than the change being measured. Here every setting is a
`jmeta_peer.Runner` built and compiled in the same process; then each round runs every setting's
steps back to back, the order reversed every other round, and the line reports each setting's
median, every step time, and the per-round ratio of each setting to the first.

A setting is `name` or `name=JSON`; the JSON holds `Runner` keyword arguments plus, optionally,
  "query": q, "support": s   keep only the first q query / s support images of every task (the
                             step's floor: what does not scale with the images);
  "patch": "path/to/module.py"  a module whose `patched()` context manager is entered while the
                             setting is built and compiled (a jitted function's trace is fixed
                             at its first call, so the patch only reaches this setting's step;
                             benchmarks/ab_patches/ has the ones docs/PERFORMANCE.md used);
  "compiler_options": {...}  XLA debug options for this setting's step only, e.g.
                             {"xla_cpu_use_fusion_emitters": true} (scalar options; XLA_FLAGS
                             would apply to every setting of the process).

  python benchmarks/step_ab.py --variant so --setting base \
      --setting 'q1s1={"query": 1, "support": 1}' --rounds 4
  python benchmarks/step_ab.py --variant so --setting chunk1 \
      --setting 'chunk2={"task_chunk_size": 2}' --rounds 10
  python benchmarks/step_ab.py --variant bmg1 --setting base \
      --setting 'off={"patch": "benchmarks/ab_patches/winograd_off.py"}'
  python benchmarks/step_ab.py --variant so --setting base \
      --setting 'emitters={"compiler_options": {"xla_cpu_use_fusion_emitters": true}}'

The device count is the process's (every setting shares the backend): `--devices` (default: one
per core, dividing the meta-batch). Each setting's steps cycle through the harness's 4 batches.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_RUNNER_OPTIONS = ("conv_impl", "task_chunk_size", "remat", "conv_bias")
_SETTING_OPTIONS = _RUNNER_OPTIONS + ("query", "support", "patch", "compiler_options")


def parse_setting(text: str) -> tuple:
  """`name` or `name=JSON` -> (name, options); unknown options fail here, naming the allowed."""
  name, _, spec = text.partition("=")
  if not name:
    raise ValueError(f"--setting {text!r}: expected NAME or NAME=JSON")
  options = json.loads(spec) if spec else {}
  if not isinstance(options, dict):
    raise ValueError(f"--setting {name}: the JSON must be an object, got {spec!r}")
  unknown = sorted(set(options) - set(_SETTING_OPTIONS))
  if unknown:
    raise ValueError(f"--setting {name}: unknown option(s) {unknown}; allowed: "
                     f"{list(_SETTING_OPTIONS)}")
  if not isinstance(options.get("compiler_options", {}), dict):
    raise ValueError(f"--setting {name}: compiler_options must be an object, got "
                     f"{options['compiler_options']!r}")
  for field in ("query", "support"):
    if field in options and not (isinstance(options[field], int) and options[field] >= 1):
      raise ValueError(f"--setting {name}: {field} must be a positive int, got {options[field]!r}")
  return name, options


def load_patch(path: str):
  """The `patched()` context manager of the module at `path`."""
  spec = importlib.util.spec_from_file_location(f"step_ab_patch_{abs(hash(path))}", path)
  if spec is None:
    raise ValueError(f"patch {path!r}: not a Python file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "patched"):
    raise ValueError(f"patch {path!r} has no `patched()` context manager")
  return module.patched


def slice_images(runner, query: int = None, support: int = None) -> None:
  """Keeps the first `query` query and `support` support images (and labels) of every task."""
  import jax
  sliced = []
  for task in runner.batches:
    fields = {}
    if query is not None:
      fields.update(query=task.query[:, :query], query_labels=task.query_labels[:, :query])
    if support is not None:
      fields.update(support=task.support[:, :support],
                    support_labels=task.support_labels[:, :support])
    # the slices keep the task axis's sharding (it is the leading one)
    sliced.append(jax.block_until_ready(task._replace(**fields)))
  runner.batches = sliced


def build(jmeta_peer, variant: str, devices: int, options: dict):
  """One setting's Runner, compiled (first step run) under its patch."""
  runner_kwargs = {k: options[k] for k in _RUNNER_OPTIONS if k in options}
  patch = load_patch(options["patch"]) if "patch" in options else contextlib.nullcontext
  with patch():
    runner = jmeta_peer.Runner(variant, devices=devices, **runner_kwargs)
    if "query" in options or "support" in options:
      slice_images(runner, options.get("query"), options.get("support"))
    start = time.perf_counter()
    if "compiler_options" in options:
      runner.compile_step(options["compiler_options"])
    runner.step(0)
    compile_s = time.perf_counter() - start
  return runner, compile_s


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", default="so", help="so, fo, bmg1..bmg5")
  parser.add_argument("--setting", action="append", required=True,
                      help="NAME or NAME=JSON (repeat; the first is the reference)")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--steps", type=int, default=2, help="timed steps per setting per round")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the compile")
  parser.add_argument("--devices", default="auto")
  parser.add_argument("--peers_dir", default=os.path.join(_HERE, "..", "..", "shared", "peers"))
  parser.add_argument("--label", default="", help="free text copied into the line")
  args = parser.parse_args(argv)
  settings = [parse_setting(text) for text in args.setting]
  names = [name for name, _ in settings]
  if len(set(names)) != len(names):
    parser.error(f"--setting names must differ, got {names}")
  if args.rounds < 1 or args.steps < 1:
    parser.error("--rounds and --steps must be >= 1")

  sys.path.insert(0, os.path.abspath(args.peers_dir))
  sys.path.insert(0, _HERE)
  import jmeta_peer  # pylint: disable=g-import-not-at-top
  devices = args.devices if args.devices == "auto" else int(args.devices)

  runners, compile_s = {}, {}
  for name, options in settings:
    runners[name], compile_s[name] = build(jmeta_peer, args.variant, devices, options)
  step_index = {name: 1 for name in names}
  for name in names:
    for _ in range(args.warmup):
      runners[name].step(step_index[name])
      step_index[name] += 1

  times = {name: [] for name in names}
  for round_index in range(args.rounds):
    order = names if round_index % 2 == 0 else names[::-1]
    for name in order:
      for _ in range(args.steps):
        start = time.perf_counter()
        runners[name].step(step_index[name])
        times[name].append((time.perf_counter() - start) * 1e3)
        step_index[name] += 1

  reference = names[0]
  per_round = args.steps

  def round_median(values, r):
    return statistics.median(values[r * per_round:(r + 1) * per_round])

  ratios = {name: [round(round_median(times[name], r) / round_median(times[reference], r), 3)
                   for r in range(args.rounds)] for name in names[1:]}
  print(json.dumps({
      "experiment": "step_ab", "label": args.label, "variant": args.variant,
      "devices": runners[reference].devices, "rounds": args.rounds, "steps_per_round": args.steps,
      "settings": dict(settings),
      "ms_median": {name: round(statistics.median(times[name])) for name in names},
      "ratio_to_first_median": {name: statistics.median(r) for name, r in ratios.items()},
      "ratio_to_first_per_round": ratios,
      "compile_s": {name: round(s, 1) for name, s in compile_s.items()},
      "all_ms": {name: [round(t) for t in times[name]] for name in names},
      "loadavg": [round(x, 2) for x in os.getloadavg()],
  }), flush=True)


if __name__ == "__main__":
  main()
