r"""Learning curves from metrics.jsonl files, several runs overlaid, to PNG.

Example:
  python -m experiments.plot --workdirs=workdirs/bmssl,workdirs/bmssl_delta0 \
      --output=docs/curves.png
"""
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
PANELS = (("meta_loss", "meta loss"), ("query_accuracy_after", "query accuracy (train tasks)"),
          ("eval_accuracy", "eval accuracy"))


def define_flags():
  """Command-line flags; defined only when run as a program, so modules import cleanly."""
  flags.DEFINE_list("workdirs", None, "Workdirs to overlay.")
  flags.DEFINE_list("labels", None, "Legend labels (default: workdir names).")
  flags.DEFINE_string("output", "curves.png", "PNG path.")


def plot(workdirs, output: str, *, labels=None) -> str:
  """Plots each metric against step and against wall-clock; returns `output`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from experiments import metrics_log
  labels = labels or [os.path.basename(os.path.normpath(w)) for w in workdirs]
  figure, axes = plt.subplots(2, len(PANELS), figsize=(5 * len(PANELS), 7), squeeze=False)
  for workdir, label in zip(workdirs, labels):
    records = metrics_log.read(os.path.join(workdir, "metrics.jsonl"))
    for column, (name, title) in enumerate(PANELS):
      points = [(r["step"], r.get("wall_s"), r[name]) for r in records if name in r]
      if not points:
        continue
      steps, walls, values = zip(*points)
      axes[0, column].plot(steps, values, label=label)
      axes[0, column].set(title=title, xlabel="step")
      if all(w is not None for w in walls):
        axes[1, column].plot([w / 60 for w in walls], values, label=label)
        axes[1, column].set(title=title, xlabel="wall-clock (min)")
  for axis in axes.flat:
    axis.grid(alpha=0.3)
    if axis.lines:
      axis.legend(fontsize=8)
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  figure.savefig(output, dpi=100)
  plt.close(figure)
  return output


def main(argv):
  del argv
  if not FLAGS.workdirs:
    raise app.UsageError("--workdirs is required.")
  print(plot(FLAGS.workdirs, FLAGS.output, labels=FLAGS.labels))


if __name__ == "__main__":
  define_flags()
  app.run(main)
