"""A checkpoint write that the disk refuses is reported and leaves the older checkpoints intact.

"No space left on device" is injected at each file write orbax makes from Python (metadata,
commit markers), and a real file-size limit (RLIMIT_FSIZE, enforced by the kernel) makes
tensorstore's array writes fail; a training run stops on it and a relaunch resumes.
"""
import errno
import os
import pathlib
import subprocess
import sys
import textwrap

from etils import epath
import numpy as np
import pytest

from configs import bmssl_omniglot
from configs import common
from experiments import checkpoints as checkpoints_lib
from experiments import metrics_log
from experiments import train as train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _state(step, size=1000):
  return {"weights": np.full((size,), step, np.float32), "step": np.array(step, np.int32)}


def _restore(directory, size=1000):
  return checkpoints_lib.Checkpoints(str(directory), keep=10).restore_latest(_state(0, size))


def _fill_disk_at_write(monkeypatch, directory, index, *, path_contains=""):
  """Makes the `index`-th file opened for writing under `directory` fail with ENOSPC.

  Orbax writes its metadata and commit markers through `epath` (tensorstore writes the arrays
  in C++). Returns the number of such writes so far, to tell whether the failure happened.
  """
  path_class = type(epath.Path(directory))
  original = path_class.open
  writes = []

  def open_or_fail(self, mode="r", *args, **kwargs):
    path = str(self)
    if (any(flag in mode for flag in "wax") and path.startswith(str(directory))
        and path_contains in path):
      writes.append(path)
      if len(writes) == index + 1:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return original(self, mode, *args, **kwargs)

  monkeypatch.setattr(path_class, "open", open_or_fail)
  return writes


def test_no_space_at_any_write_of_a_save_keeps_the_previous_checkpoint(tmp_path):
  stages = 0
  while True:  # the disk fills up at write 0, 1, 2, ... of the save until a save needs fewer
    directory = tmp_path / f"stage{stages}"
    manager = checkpoints_lib.Checkpoints(str(directory), keep=1)  # keep=1: nothing to spare
    manager.save(1, _state(1))
    with pytest.MonkeyPatch.context() as patch:
      writes = _fill_disk_at_write(patch, directory, stages)
      try:
        manager.save(2, _state(2))
      except checkpoints_lib.CheckpointWriteError as error:
        failure = error
      else:
        failure = None
    if failure is None:
      assert len(writes) == stages  # every write of a save has been made to fail
      break
    stages += 1
    assert failure.errno == errno.ENOSPC
    message = str(failure)
    assert "checkpoint 2 could not be written" in message and str(directory) in message
    assert "No space left on device" in message and "complete checkpoints: [1]" in message
    assert manager.steps() == [1]
    restored = _restore(directory)  # as a relaunched run would
    assert int(restored["step"]) == 1
    np.testing.assert_array_equal(restored["weights"], _state(1)["weights"])
    # Space is back: the same save succeeds over the partial one, and replaces checkpoint 1.
    manager.save(2, _state(2))
    assert manager.steps() == [2] and sorted(os.listdir(directory)) == ["2"]
    np.testing.assert_array_equal(_restore(directory)["weights"], _state(2)["weights"])
  assert stages >= 3, f"only {stages} writes per save were intercepted"


def _noise_state(step):
  """1M incompressible floats: 4 MB on disk whatever the compression."""
  return {"weights": np.random.default_rng(step).random(1_000_000, np.float32),
          "step": np.array(step, np.int32)}


# Once checkpoint 1 is saved, the kernel refuses writes past 64 kB (EFBIG): checkpoint 2's
# arrays fail inside tensorstore. The caught error goes to stdout.
_FILE_SIZE_LIMITED = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from experiments import checkpoints
    def noise_state(step):  # as _noise_state
      return {"weights": np.random.default_rng(step).random(1_000_000, np.float32),
              "step": np.array(step, np.int32)}
    manager = checkpoints.Checkpoints(sys.argv[1], keep=1)
    manager.save(1, noise_state(1))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write() instead of a core dump
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
      manager.save(2, noise_state(2))
    except checkpoints.CheckpointWriteError as error:
      print(error)
""")


def test_kernel_refusing_an_array_write_keeps_the_previous_checkpoint(tmp_path):
  directory = tmp_path / "checkpoints"
  result = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMITED, str(directory)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "checkpoint 2 could not be written" in result.stdout, result.stderr[-2000:]
  assert "File too large" in result.stdout and "complete checkpoints: [1]" in result.stdout
  restored = checkpoints_lib.Checkpoints(str(directory), keep=10).restore_latest(
      _noise_state(0))
  assert int(restored["step"]) == 1
  np.testing.assert_array_equal(restored["weights"], _noise_state(1)["weights"])


def test_training_stops_on_a_full_disk_and_a_relaunch_resumes(data_dir, cache_dir, monkeypatch,
                                                              tmp_path, caplog):
  del cache_dir  # sets $JMETA_CACHE_DIR
  monkeypatch.setenv("JMETA_DATA_DIR", str(data_dir))
  # One conv block on unaugmented images: a seconds-scale compile.
  config = common.disable_augmentation(bmssl_omniglot.get_config("smoke"))
  config.model.num_blocks = 1
  config.num_steps = 4
  config.checkpoint_every_steps = 2
  config.eval.every_steps = 1000
  with pytest.MonkeyPatch.context() as patch:
    _fill_disk_at_write(patch, tmp_path, 0, path_contains=f"{os.sep}checkpoints{os.sep}4.")
    with pytest.raises(checkpoints_lib.CheckpointWriteError,
                       match=r"checkpoint 4 could not be written.*No space left on device.*"
                             r"complete checkpoints: \[2\]"):
      train_lib.run(config, str(tmp_path))
  metrics = train_lib.run(config, str(tmp_path))  # the disk has space again
  assert "resumed from step 2" in caplog.text
  assert metrics["step"] == 4 and len(metrics["fingerprint"]) == 64
  assert [r["step"] for r in metrics_log.read(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3, 4, 4]
