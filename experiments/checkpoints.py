"""Checkpoints of the training state with orbax: periodic, on signals, resumable.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoint intact. A checkpoint that exists but
fails to restore (truncated or corrupted files) is reported and the next older one is used.
A save that fails (disk full, quota, I/O error) raises `CheckpointWriteError`; the checkpoints
already complete are left as they were.
Restoring reads arrays only (tensorstore/zarr); it never unpickles or executes anything.
"""
import logging
import os

import jax
import orbax.checkpoint as ocp


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; the older, complete checkpoints are untouched."""


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(self, directory: str, *, keep: int):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def steps(self) -> list:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state) -> None:
    """Saves `state` as checkpoint `step` (synchronously: on return it is on disk)."""
    if step in self._manager.all_steps():
      return
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
      self._manager.wait_until_finished()
    except Exception as error:
      # Disk trouble surfaces as OSError from orbax's metadata writes but as ValueError from
      # tensorstore's array writes ("OUT_OF_RANGE: ... File too large [os_error_code='27']"):
      # one type, naming the step and what is still there to resume from.
      complete = self.steps()
      message = (f"checkpoint {step} could not be written to {self._manager.directory} "
                 f"({type(error).__name__}: {error}); complete checkpoints: {complete} "
                 f"(a relaunch resumes from {complete[-1] if complete else 'scratch'}).")
      code = getattr(error, "errno", None)
      raise (CheckpointWriteError(code, message) if code else
             CheckpointWriteError(message)) from error

  def restore_latest(self, template):
    """The newest restorable state shaped like `template`, or None if there is none.

    A damaged checkpoint is logged as a warning and skipped in favour of the one before it.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    for step in reversed(self.steps()):
      try:
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as error:  # orbax raises many types for damaged files
        logging.warning("checkpoint %d in %s cannot be restored (%s: %s); falling back to an "
                        "older checkpoint.", step, self._manager.directory,
                        type(error).__name__, error)
    return None

  def close(self) -> None:
    self._manager.close()
