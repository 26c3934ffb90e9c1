r"""Markdown rows for docs/RESULTS.md from evaluated training workdirs.

  python scripts/results_table.py --row "BMSSL=/work/runs/bmssl" --row "untrained=/work/runs/bmssl@0"

Each workdir needs `metrics.jsonl` (steps and training wall-clock from its final line) and the
`eval_*.json` files written by `experiments.evaluate`; `WORKDIR@0` selects the rows evaluated
with `--untrained` (step 0) instead of the final checkpoint's. A protocol that was not evaluated
prints as "–". Accuracies are mean ± 95% CI in percent, with the episode count when it is not 2,000.
"""
import argparse
import glob
import json
import os

PROTOCOLS = [("omniglot", 5, 1), ("omniglot", 5, 5), ("omniglot", 20, 1), ("omniglot", 20, 5),
             ("mnist", 5, 1), ("mnist", 5, 5)]


def evaluations(workdir: str, step: int) -> dict:
  """{(dataset family, N, K): row} over every eval_*.json of `workdir` (non-adapted rows of
  the checkpoint at `step`)."""
  found = {}
  for path in sorted(glob.glob(os.path.join(workdir, "eval_*.json"))):
    with open(path) as file:
      for row in json.load(file):
        if row["adapted"] or row["step"] != step:
          continue
        family = row["dataset"].partition(":")[0]
        found[(family, row["num_ways"], row["num_shots"])] = row
  return found


def all_steps(workdir: str):
  for path in glob.glob(os.path.join(workdir, "eval_*.json")):
    with open(path) as file:
      yield from (row["step"] for row in json.load(file))


def read_metrics(workdir: str) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as file:
    return [json.loads(line) for line in file if line.strip()]


def final_metrics(lines) -> dict:
  return dict(lines[-1], wall_s=training_seconds(lines))


def training_seconds(lines) -> float:
  """The training wall-clock over every launch: `wall_s` restarts from 0 when a run resumes,
  so sum the last `wall_s` of each launch (a launch ends where `wall_s` goes down)."""
  total, last = 0.0, 0.0
  for line in lines:
    if "wall_s" not in line:
      continue
    if line["wall_s"] < last:
      total += last
    last = line["wall_s"]
  return total + last


def validation_cell(lines) -> str:
  """The last `eval_accuracy ± eval_ci95` of a run's metrics records, in percent."""
  evaluated = [line for line in lines if "eval_accuracy" in line]
  if not evaluated:
    return "–"
  last = evaluated[-1]
  return f"{100 * last['eval_accuracy']:.1f} ± {100 * last['eval_ci95']:.1f}"


def cell(row) -> str:
  if row is None:
    return "–"
  text = f"{100 * row['accuracy']:.1f} ± {100 * row['ci95']:.1f}"
  return text if row["num_episodes"] == 2000 else f"{text} ({row['num_episodes']})"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--row", action="append", required=True, help="NAME=WORKDIR")
  parser.add_argument("--protocols", default=",".join(f"{d}:{n}:{k}" for d, n, k in PROTOCOLS),
                      help="columns, comma-separated DATASET:N:K (default: all six)")
  parser.add_argument("--validation", action="store_true",
                      help="add the last in-training validation accuracy (eval_accuracy)")
  args = parser.parse_args()
  protocols = []
  for spec in args.protocols.split(","):
    family, n, k = spec.split(":")
    protocols.append((family, int(n), int(k)))
  header = ["method", "steps", "train wall-clock"] + [
      f"{'Omniglot' if d == 'omniglot' else 'MNIST'} {n}w{k}s" for d, n, k in protocols]
  if args.validation:
    header.append("validation (in training)")
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for spec in args.row:
    name, _, workdir = spec.rpartition("=")  # names may contain "="
    workdir, untrained, _ = workdir.partition("@0")
    lines = read_metrics(workdir)
    final = final_metrics(lines)
    # A run stopped by a signal checkpoints a step after its last metrics line: take the step
    # the evaluations were made at.
    step = 0 if untrained else max([final["step"]] + list(all_steps(workdir)))
    found = evaluations(workdir, step)
    minutes = 0.0 if untrained else final.get("wall_s", 0.0) / 60
    cells = [name, str(step), f"{minutes:.0f} min"] + [
        cell(found.get(protocol)) for protocol in protocols]
    if args.validation:
      cells.append(validation_cell(lines))
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
