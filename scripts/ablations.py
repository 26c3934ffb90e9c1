r"""BMSSL ablations on 5-way 1-shot (docs/RESULTS.md): train each row briefly, evaluate it.

Every row is `configs/bmssl_omniglot.py` with N = 5, T = 16, unrotated training images, no
elastic warp and query τ = 0.1 (`SWEEP_BASE`: the default when the sweep ran), `--steps` outer
steps and one change. Rows run one after another; a row whose evaluation file exists is
skipped, so an interrupted sweep resumes (a row cut off mid-training resumes from its last
checkpoint). Each row's command is printed before it runs.

  python scripts/ablations.py --root=/work/runs/ablations --steps=150 --rows=baseline,delta0
  python scripts/ablations.py --root=... --cpu=1   # pin the sweep to core 1 (taskset), 1 device

Then `python scripts/results_table.py --row "baseline=ROOT/baseline" --row ...` tabulates them.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# The sweep's baseline: configs/bmssl_omniglot.py as it was when the sweep ran (N = 5, T = 16,
# unrotated training images, no elastic warp; the default moved to N = 20, T = 4, then to
# rotated images, then to elastic warps, a query temperature of 0.05 and BMG's query step,
# after it). A row's own value of a field replaces this.
SWEEP_BASE = ["--config.tasks.num_ways=5", "--config.tasks.num_tasks=16",
              "--config.data.train_rotations=False", "--config.augment.elastic_magnitude=0",
              "--config.meta.temperature=0.1", "--config.meta.bmg_query_step=False"]

# name -> config overrides on top of the baseline (L = 1, δ = 1, λ = 0.5, KL, S = 2).
ROWS = {
    "baseline": [],
    "delta0": ["--config.meta.num_bootstrap_steps=0"],
    "delta5": ["--config.meta.num_bootstrap_steps=5"],
    "delta10": ["--config.meta.num_bootstrap_steps=10"],
    "mix0": ["--config.meta.mix=0.0"],
    "l2": ["--config.meta.matching=l2"],
    "support3": ["--config.tasks.num_support=3"],  # S = 1 is refused: SupCon needs positives
    "support4": ["--config.tasks.num_support=4"],
    "inner5": ["--config.inner.num_steps=5"],
    "adapt_last_block": ["--config.inner.adapt=encoder/block3"],
    "ways20_tasks4": ["--config.tasks.num_ways=20", "--config.tasks.num_tasks=4"],
    # The best changes above, combined.
    "ways20_tasks4_last_block": ["--config.tasks.num_ways=20", "--config.tasks.num_tasks=4",
                                 "--config.inner.adapt=encoder/block3"],
    "ways20_tasks4_support3_last_block": [
        "--config.tasks.num_ways=20", "--config.tasks.num_tasks=4",
        "--config.tasks.num_support=3", "--config.inner.adapt=encoder/block3"],
}
EVAL_NAME = "test_5w1s"


def row_commands(name: str, workdir: str, steps: int, episodes: int) -> tuple[list, list]:
  """The train and evaluate commands of one row."""
  changed = {flag.partition("=")[0] for flag in ROWS[name]}
  base = [flag for flag in SWEEP_BASE if flag.partition("=")[0] not in changed]
  train = [sys.executable, "-m", "experiments.train", "--config=configs/bmssl_omniglot.py",
           f"--workdir={workdir}", f"--config.num_steps={steps}",
           f"--config.eval.every_steps={max(1, steps // 3)}",
           f"--config.checkpoint_every_steps={max(1, steps // 3)}", *base, *ROWS[name]]
  evaluate = [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}", "--ways=5",
              "--shots=1", f"--episodes={episodes}", f"--name={EVAL_NAME}"]
  return train, evaluate


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", required=True, help="one workdir per row under this folder")
  parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated of {list(ROWS)}")
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--episodes", type=int, default=2000)
  parser.add_argument("--cpu", type=int, default=None,
                      help="pin to this core (taskset) with one JAX device")
  args = parser.parse_args(argv)
  names = args.rows.split(",")
  unknown = [name for name in names if name not in ROWS]
  if unknown:
    parser.error(f"--rows: {unknown} unknown; allowed: {list(ROWS)}")
  if args.steps < 1 or args.episodes < 1:
    parser.error("--steps and --episodes must be >= 1")
  env = dict(os.environ)
  prefix = []
  if args.cpu is not None:
    prefix = ["taskset", "-c", str(args.cpu)]
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  else:
    env.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count()}")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for name in names:
    workdir = os.path.join(os.path.abspath(args.root), name)
    if os.path.exists(os.path.join(workdir, f"eval_{EVAL_NAME}.json")):
      print(f"{name}: done, skipped", flush=True)
      continue
    for command in row_commands(name, workdir, args.steps, args.episodes):
      print(f"{name} ({time.strftime('%H:%M:%S')}): {' '.join(prefix + command)}", flush=True)
      if subprocess.run(prefix + command, cwd=repo, env=env, stdout=subprocess.DEVNULL,
                        check=False).returncode:
        print(f"{name}: FAILED (see the error above); going on with the next row", flush=True)
        break
    else:
      with open(os.path.join(workdir, f"eval_{EVAL_NAME}.json")) as file:
        print(f"{name}: {json.load(file)}", flush=True)


if __name__ == "__main__":
  main()
