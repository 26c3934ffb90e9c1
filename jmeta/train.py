"""The outer loop: one jitted meta-update that samples, adapts, bootstraps and differentiates.

Example:
  >>> import jax, optax
  >>> from jmeta import meta, models, tasks, train
  >>> model = models.conv4.make(width=8)
  >>> adapter, objective = meta.bmssl(model.apply, num_ways=3, step_size=0.1,
  ...     num_inner_steps=1, num_bootstrap_steps=1, mix=0.5)
  >>> state = train.init_state(adapter.init_meta({"encoder": model.init(jax.random.key(0))}),
  ...                          optax.adam(1e-3))
"""
import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jmeta import parallel
from jmeta.types import MetaParams, Metrics, PRNGKey, PyTree, Task

TaskSampler = Callable[[PRNGKey, PyTree], Task]  # (key, data) -> tasks with leading [T]


class TrainState(NamedTuple):
  meta_params: MetaParams
  opt_state: optax.OptState
  step: jax.Array               # [] int32: outer steps taken
  num_skipped: jax.Array        # [] int32: updates skipped because of non-finite values


def init_state(meta_params: MetaParams, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(meta_params=meta_params, opt_state=optimizer.init(meta_params),
                    step=jnp.zeros([], jnp.int32), num_skipped=jnp.zeros([], jnp.int32))


def map_tasks(objective, *, task_chunk_size: Optional[int] = None, num_shards: int = 1):
  """Maps `objective(meta_params, key, task)` over `[T]` keys and tasks.

  `task_chunk_size=None` vmaps all T tasks at once (largest matmuls; most memory); `c` runs
  `lax.map` over chunks of `c` vmapped tasks per shard (`c=1`: one task at a time).

  With the task axis sharded over `num_shards` devices, each `lax.map` iteration takes `c` tasks
  from every shard, so every device keeps working on its own tasks; chunking the global axis
  instead would make XLA gather all tasks onto every device and lose the data parallelism.
  """

  def mapped(meta_params, keys, tasks):
    per_task = jax.vmap(objective, in_axes=(None, 0, 0))
    num_tasks = keys.shape[0]
    if task_chunk_size is None or task_chunk_size * num_shards >= num_tasks:
      return per_task(meta_params, keys, tasks)
    if num_tasks % (task_chunk_size * num_shards):
      raise ValueError(f"task_chunk_size={task_chunk_size} must divide the tasks per shard "
                       f"(num_tasks={num_tasks} over {num_shards} shards).")

    def split(x):  # [T, ...] -> [T/(S*c), S*c, ...], iteration i: chunk i of every shard
      x = x.reshape((num_shards, -1, task_chunk_size) + x.shape[1:])
      return jnp.swapaxes(x, 0, 1).reshape((-1, num_shards * task_chunk_size) + x.shape[3:])

    def merge(x):  # the inverse of split
      x = x.reshape((x.shape[0], num_shards, task_chunk_size) + x.shape[2:])
      return jnp.swapaxes(x, 0, 1).reshape((num_tasks,) + x.shape[3:])

    out = jax.lax.map(lambda chunk: per_task(meta_params, *chunk),
                      jax.tree.map(split, (keys, tasks)))
    return jax.tree.map(merge, out)

  return mapped


def meta_gradient(objective, *, num_tasks: int, task_chunk_size: Optional[int] = None,
                  mesh=None):
  """`(meta_params, keys, tasks) -> ((mean loss, per-task metrics), mean meta-gradient)`.

  The gradient of the mean of `objective` over `[T]` tasks, computed so that nothing per task
  outlives its own chunk:

  * `task_chunk_size=None`: one `vmap` over the tasks (of each device), differentiated as a
    whole: largest batched matmuls, activation memory for every task at once.
  * `task_chunk_size=c`: a loop over chunks of `c` vmapped tasks, each chunk's meta-gradient
    taken inside the loop and added to a carried sum. Differentiating a `lax.map` from outside
    instead would stack every chunk's activations for a backward loop; here they are freed
    chunk by chunk (memory vs inner steps: docs/PERFORMANCE.md). With one task per chunk the
    weights are no longer batched, so XLA's own convolutions apply (`conv_impl="native"`),
    which is the fastest CPU path.
  * `mesh`: every device takes its `T / devices` tasks under `shard_map` and the sums meet in
    one `psum`, so the per-device program is exactly the single-device one.

  All three compute the same numbers up to float32 summation order.
  """
  if mesh is not None:
    parallel.check_divisible(num_tasks, mesh)
  num_shards = 1 if mesh is None else mesh.size
  local_tasks = num_tasks // num_shards
  if task_chunk_size is not None and (task_chunk_size < 1 or local_tasks % min(
      task_chunk_size, local_tasks)):
    raise ValueError(f"task_chunk_size={task_chunk_size} must be >= 1 and divide the "
                     f"{local_tasks} tasks per device (num_tasks={num_tasks} over "
                     f"{num_shards} devices).")

  def chunk_sum(meta_params, keys, tasks):
    def summed(meta_params):
      losses, metrics = jax.vmap(objective, in_axes=(None, 0, 0))(meta_params, keys, tasks)
      return jnp.sum(losses), metrics
    return jax.value_and_grad(summed, has_aux=True)(meta_params)

  def local_sum(meta_params, keys, tasks):
    size = keys.shape[0] if task_chunk_size is None else min(task_chunk_size, keys.shape[0])
    if size == keys.shape[0]:
      return chunk_sum(meta_params, keys, tasks)
    chunks = jax.tree.map(lambda x: x.reshape((-1, size) + x.shape[1:]), (keys, tasks))

    # The gradient sum is carried through the loop: stacking every chunk's gradient and
    # reducing the stack afterwards cost a [chunks, ...] buffer per parameter and a strided
    # reduction over it (docs/PERFORMANCE.md, "Where the rest of the step goes"). `zeros_like`
    # keeps the parameters' `shard_map` varying axes, as the carry must.
    def accumulate(grad_sum, chunk):
      (loss, metrics), grads = chunk_sum(meta_params, *chunk)
      return jax.tree.map(jnp.add, grad_sum, grads), (loss, metrics)

    grads, (losses, metrics) = jax.lax.scan(
        accumulate, jax.tree.map(jnp.zeros_like, meta_params), chunks)
    merge = lambda m: m.reshape((-1,) + m.shape[2:])
    return (jnp.sum(losses), jax.tree.map(merge, metrics)), grads

  if num_shards == 1:
    summed_over_tasks = local_sum
  else:
    axis = parallel.DATA_AXIS

    def per_device(meta_params, keys, tasks):
      # Mark the replicated meta parameters as varying per device: the gradient of a replicated
      # value is psum-ed by JAX, which would all-reduce every inner-loop gradient.
      meta_params = jax.tree.map(lambda v: jax.lax.pcast(v, (axis,), to="varying"),
                                 meta_params)
      (loss, metrics), grads = local_sum(meta_params, keys, tasks)
      return (jax.lax.psum(loss, axis), metrics), jax.lax.psum(grads, axis)

    tasks_spec, replicated_spec = jax.sharding.PartitionSpec(axis), jax.sharding.PartitionSpec()
    summed_over_tasks = jax.shard_map(
        per_device, mesh=mesh, in_specs=(replicated_spec, tasks_spec, tasks_spec),
        out_specs=((replicated_spec, tasks_spec), replicated_spec))

  def mean_over_tasks(meta_params, keys, tasks):
    (loss, metrics), grads = summed_over_tasks(meta_params, keys, tasks)
    return (loss / num_tasks, metrics), jax.tree.map(lambda g: g / num_tasks, grads)

  return mean_over_tasks


def make_update(objective, optimizer: optax.GradientTransformation, *,
                sample_tasks: TaskSampler, num_tasks: int,
                task_chunk_size: Optional[int] = None, mesh=None,
                skip_nonfinite: bool = True, donate: bool = True):
  """Builds ONE jitted outer step `update(state, key, data) -> (state, metrics)`.

  The step folds `state.step` into the run `key`, samples `num_tasks` tasks from the on-device
  `data` with `sample_tasks`, takes the gradient of the mean loss over them with respect to the
  meta parameters (`meta_gradient`: vmap, chunks, devices) and applies `optimizer`.

  Args:
    objective: `(meta_params, key, task) -> (loss, metrics)` for one task.
    optimizer: the outer optax optimizer.
    sample_tasks: `(key, data) -> Task` with leading `[num_tasks]`.
    num_tasks: T, the meta-batch size.
    task_chunk_size: tasks per device vmapped at once; see `meta_gradient`.
    mesh: split the tasks over this mesh's `data` axis (`shard_map`; None: one device).
    skip_nonfinite: if the loss or gradient norm is NaN/inf, keep the old state (counted in
      `state.num_skipped` and the metric `skipped`) instead of applying the update.
    donate: donate the input state's buffers (do not reuse the state passed in).

  Returns:
    The jitted update. Metrics are means over tasks plus "gradient_norm" and "skipped".
  """
  if num_tasks < 1:
    raise ValueError(f"num_tasks={num_tasks} must be >= 1.")
  gradient_fn = meta_gradient(objective, num_tasks=num_tasks, task_chunk_size=task_chunk_size,
                              mesh=mesh)

  def update(state: TrainState, key: PRNGKey, data: PyTree) -> tuple[TrainState, Metrics]:
    key_tasks, key_objective = jax.random.split(jax.random.fold_in(key, state.step))
    tasks = sample_tasks(key_tasks, data)
    keys = jax.random.split(key_objective, num_tasks)
    if mesh is not None:
      tasks, keys = jax.lax.with_sharding_constraint((tasks, keys), parallel.task_sharding(mesh))

    (loss, task_metrics), grads = gradient_fn(state.meta_params, keys, tasks)
    metrics = jax.tree.map(jnp.mean, task_metrics)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.meta_params)
    meta_params = optax.apply_updates(state.meta_params, updates)
    gradient_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(gradient_norm)
    if skip_nonfinite:
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      meta_params = keep(meta_params, state.meta_params)
      opt_state = keep(opt_state, state.opt_state)
    skipped = jnp.logical_not(finite).astype(jnp.int32) if skip_nonfinite else jnp.int32(0)
    new_state = TrainState(meta_params=meta_params, opt_state=opt_state, step=state.step + 1,
                           num_skipped=state.num_skipped + skipped)
    metrics = dict(metrics, meta_loss=loss, gradient_norm=gradient_norm,
                   skipped=skipped, finite=finite)
    return new_state, metrics

  return jax.jit(update, donate_argnums=(0,) if donate else ())
