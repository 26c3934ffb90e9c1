"""Data parallelism: a device mesh whose `data` axis shards the task batch.

Parameters and optimizer state are replicated; the `[T]` task axis is sharded, so each device
adapts its own tasks and XLA all-reduces the meta-gradient. This is `jit` with named shardings,
the successor of `pmap`; the same step runs unchanged on one device or many, on one host or
several (`initialize_distributed` first).
"""
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all, by default) of every process."""
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are present "
                     f"({jax.default_backend()}); allowed: 1..{len(devices)}.")
  return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def task_sharding(mesh: Mesh) -> NamedSharding:
  """Shards a leading task axis `[T, ...]` over the mesh's `data` axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def place(tree, sharding: NamedSharding):
  """Places host values as global arrays with `sharding`, on one process or many.

  Each process materialises only the slices its own devices hold (every process must pass the
  same values), so this works unchanged across hosts where `jax.device_put` would not.
  """
  def place_leaf(leaf):
    host = np.asarray(jax.device_get(leaf))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(place_leaf, tree)


def replicate(tree, mesh: Mesh):
  """Places every leaf of `tree` on all devices of `mesh` (all processes)."""
  return place(tree, replicated(mesh))


def shard_pool(images: np.ndarray, mesh: Mesh) -> jax.Array:
  """Splits an image pool `[M, ...]` into one shard per device: `[D, M // D, ...]` on `data`.

  Each device then samples its tasks from its own images, so a device (and a process) only ever
  holds and reads its own shard; the last `M mod D` images are dropped.
  """
  num_shards = mesh.size
  per_shard = images.shape[0] // num_shards
  if per_shard < 1:
    raise ValueError(f"{images.shape[0]} images cannot be split over {num_shards} devices.")
  pool = images[:per_shard * num_shards].reshape((num_shards, per_shard) + images.shape[1:])
  return place(pool, task_sharding(mesh))


def check_divisible(num_tasks: int, mesh: Mesh) -> None:
  if num_tasks % mesh.size:
    raise ValueError(f"num_tasks={num_tasks} must be a multiple of the {mesh.size} devices in "
                     "the mesh, so every device adapts the same number of tasks.")


def initialize_distributed(*, coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           initialization_timeout: int = 300,
                           heartbeat_timeout_seconds: int = 100) -> None:
  """Joins a multi-host job via `jax.distributed.initialize`.

  With no arguments, JAX auto-detects Slurm, Open MPI and TPU pod environments. On CPU,
  cross-process collectives go through gloo. A process that stops sending heartbeats for
  `heartbeat_timeout_seconds` makes the others fail instead of waiting forever.
  """
  # Only CPU collectives read this; asking for the backend here would initialise it too early.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=initialization_timeout,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds)
