"""Checkpoints of the training state with orbax: periodic, on signals, resumable.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoint intact. A checkpoint that exists but
fails to restore (truncated or corrupted files) is reported and the next older one is used.
Restoring reads arrays only (tensorstore/zarr); it never unpickles or executes anything.
"""
import logging
import os

import jax
import orbax.checkpoint as ocp


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
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

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
