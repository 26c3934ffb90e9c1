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
              "processes": jax.process_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
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



def record_data_shards(workdir: str, data, *, labeled: bool) -> None:
  """Writes which training images this process holds: `data_shards/process_<i>.json`.

  Unsupervised pools are `[D, M/D, ...]` with one shard per device; a process lists the image
  ranges of its own devices' shards, so a multi-host run can be checked to read every image
  once. A labeled pool is replicated on every process.
  """
  folder = os.path.join(workdir, "data_shards")
  os.makedirs(folder, exist_ok=True)
  if labeled:
    record = {"process": jax.process_index(), "replicated": True}
  else:
    per_shard = data.shape[1]
    shards = sorted({shard.index[0].start or 0 for shard in data.addressable_shards})
    record = {"process": jax.process_index(), "replicated": False,
              "image_ranges": [[d * per_shard, (d + 1) * per_shard] for d in shards]}
  with open(os.path.join(folder, f"process_{jax.process_index()}.json"), "w") as file:
    json.dump(record, file)
