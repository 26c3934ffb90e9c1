"""Metrics as JSON lines and TensorBoard events (tensorboardX: no TensorFlow needed).

Only process 0 writes; other processes get a log that drops everything.
"""
import json
import os

import numpy as np


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricsLog:
  """Appends `{"step": s, **metrics}` lines to `metrics.jsonl` and scalars to TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self._enabled = enabled
    self._tensorboard = None
    self.path = os.path.join(workdir, "metrics.jsonl")
    if not enabled:
      return
    _truncate_after(self.path, resume_step)
    from tensorboardX import SummaryWriter
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self._enabled:
      return
    record = {"step": int(step)}
    record.update({name: _plain(value) for name, value in metrics.items()})
    with open(self.path, "a") as file:
      file.write(json.dumps(record) + "\n")
    for name, value in record.items():
      if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tensorboard.add_scalar(name, value, step)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def _truncate_after(path: str, step: int) -> None:
  """Drops lines logged after `step`: a resumed run redoes those steps and logs them again."""
  if not os.path.exists(path):
    return
  with open(path) as file:
    lines = [line for line in file if line.strip() and json.loads(line)["step"] <= step]
  with open(path + ".tmp", "w") as file:
    file.writelines(lines)
  os.replace(path + ".tmp", path)


def read(path: str) -> list:
  """All records of a metrics.jsonl file."""
  with open(path) as file:
    return [json.loads(line) for line in file if line.strip()]
