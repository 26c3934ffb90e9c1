"""The run directory: one process group per workdir, the resolved config, package versions."""
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform

import jax
import numpy as np


class WorkdirInUseError(RuntimeError):
  """Another live process holds this workdir."""


class WorkdirLock:
  """An exclusive `flock` on `<workdir>/.lock`, held while the run lives.

  The kernel releases a `flock` when its process dies, however it dies, so a lock left by a
  killed run is stale by construction and the next launch simply takes it over.
  """

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, ".lock")
    self._file = open(self._path, "a+")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or "unknown"
      self._file.close()
      raise WorkdirInUseError(f"workdir {workdir!r} is in use by another training process "
                              f"(pid {holder}); use another --workdir or stop that run.")
    self._file.seek(0)
    self._file.truncate()
    self._file.write(str(os.getpid()))
    self._file.flush()

  def release(self) -> None:
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()


def save_run_info(workdir: str, config) -> None:
  """Writes the resolved config and the versions of everything that affects the numbers."""
  with open(os.path.join(workdir, "config.json"), "w") as file:
    file.write(config.to_json_best_effort(indent=2))
  versions = {"python": platform.python_version(), "platform": platform.platform(),
              "jax_backend": jax.default_backend(), "devices": jax.device_count(),
              "processes": jax.process_count()}
  for package in ("jmeta", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
                  "ml-collections"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  with open(os.path.join(workdir, "versions.json"), "w") as file:
    json.dump(versions, file, indent=2)


def fingerprint(tree) -> str:
  """sha256 over every leaf's bytes, in tree order: equal iff the parameters are bitwise equal."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    leaf = np.ascontiguousarray(leaf)
    digest.update(str((leaf.shape, leaf.dtype)).encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()

