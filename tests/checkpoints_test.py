"""Checkpoints survive kills and damage; a workdir admits one run at a time."""
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from experiments import checkpoints as checkpoints_lib
from experiments import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]

# Saves ever-larger checkpoints whose every value equals the step, printing each completed step.
_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from experiments import checkpoints
    manager = checkpoints.Checkpoints(sys.argv[1], keep=100)
    for step in range(1, 1000):
      state = {"weights": np.full((4_000_000,), step, np.float32), "step": np.array(step, np.int32)}
      manager.save(step, state)
      print(step, flush=True)
""")


def _template():
  return {"weights": np.zeros((4_000_000,), np.float32), "step": np.zeros((), np.int32)}


def test_sigkill_during_saves_always_leaves_a_complete_checkpoint(tmp_path):
  directory = tmp_path / "checkpoints"
  completed = 0
  for delay in (0.05, 0.3, 0.7):  # after the first save: kills land at arbitrary moments
    process = subprocess.Popen([sys.executable, "-c", _SAVER, str(directory)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    completed = max(completed, int(process.stdout.readline()))
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    out, _ = process.communicate()
    completed = max([completed] + [int(line) for line in out.split()])
    restored = checkpoints_lib.Checkpoints(str(directory), keep=100).restore_latest(_template())
    step = int(restored["step"])
    assert step >= completed  # every save the saver reported is durable
    np.testing.assert_array_equal(restored["weights"], np.full((4_000_000,), step, np.float32))


def _save_steps(directory, steps, keep=10):
  manager = checkpoints_lib.Checkpoints(str(directory), keep=keep)
  for step in steps:
    manager.save(step, {"weights": np.full((1000,), step, np.float32), "step": np.array(step, np.int32)})
  manager.close()


def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  directory = tmp_path / "checkpoints"
  _save_steps(directory, [1, 2, 3])
  damaged = 0
  for path in (directory / "3").rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
      damaged += 1
  assert damaged
  template = {"weights": np.zeros((1000,), np.float32), "step": np.zeros((), np.int32)}
  restored = checkpoints_lib.Checkpoints(str(directory), keep=10).restore_latest(template)
  assert int(restored["step"]) == 2
  assert "checkpoint 3" in caplog.text and "cannot be restored" in caplog.text


def test_keeps_only_the_last_n(tmp_path):
  directory = tmp_path / "checkpoints"
  _save_steps(directory, [1, 2, 3, 4, 5], keep=2)
  assert checkpoints_lib.Checkpoints(str(directory), keep=2).steps() == [4, 5]


def test_no_checkpoint_restores_none(tmp_path):
  assert checkpoints_lib.Checkpoints(str(tmp_path / "c"), keep=2).restore_latest(
      {"x": np.zeros(3)}) is None


_HOLDER = textwrap.dedent("""
    import sys, time
    from experiments import workdir
    lock = workdir.WorkdirLock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(600)
""")


def test_second_process_on_a_workdir_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(workdir_lib.WorkdirInUseError, match=str(holder.pid)):
    workdir_lib.WorkdirLock(str(tmp_path))
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert (tmp_path / ".lock").exists()  # the stale lock file is still there...
  lock = workdir_lib.WorkdirLock(str(tmp_path))  # ...and is taken over
  lock.release()


def test_fingerprint_is_bitwise():
  tree = {"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 2), np.float32)}
  same = {"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 2), np.float32)}
  other = {"a": np.arange(4, dtype=np.float32), "b": np.nextafter(np.ones((2, 2), np.float32), 2)}
  assert workdir_lib.fingerprint(tree) == workdir_lib.fingerprint(same)
  assert workdir_lib.fingerprint(tree) != workdir_lib.fingerprint(other)
