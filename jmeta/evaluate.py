"""Deterministic few-shot evaluation: N-way K-shot accuracy, mean ± 95% confidence interval.

Episode i is a pure function of `(seed, i)` (see `episode_keys`), so every run and every method
sees the same episodes whatever the batch size (design.md §3). Episodes are sampled, embedded
and classified on device, `batch_size` episodes per call of one jitted function that is traced
once (split over the local devices, one episode at a time on each by default): the last,
partial batch is padded with extra episodes and trimmed.

Example:
  >>> import numpy as np
  >>> from jmeta import evaluate
  >>> from jmeta.data.dataset import Dataset
  >>> images = np.zeros((40, 4, 4, 1), np.uint8)
  >>> labels = np.arange(40, dtype=np.int32) % 8
  >>> images[np.arange(40), 0, labels % 4, 0] = 255            # the class is in the pixels...
  >>> images[np.arange(40), 1, labels // 4, 0] = 255
  >>> data = Dataset(images, labels, tuple('abcdefgh'))
  >>> embed = lambda x: x.reshape(x.shape[0], -1)                  # ...so pixels embed perfectly
  >>> result = evaluate.few_shot(embed, data, num_ways=3, num_shots=1, num_queries=4,
  ...                            num_episodes=10, progress=False)
  >>> print(result)
  100.00 ± 0.00%
"""
import functools
import math
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import tqdm

from jmeta import losses
from jmeta import tasks
from jmeta.data.dataset import Dataset
from jmeta.types import PRNGKey

# (key, support [N*K, H, W, C], support_labels [N*K], query [N*Q, H, W, C]) -> logits [N*Q, N]
ClassifyFn = Callable[[PRNGKey, jax.Array, jax.Array, jax.Array], jax.Array]
EmbedFn = Callable[[jax.Array], jax.Array]  # images [B, H, W, C] float32 in [0, 1] -> [B, D]


class FewShotResult(NamedTuple):
  """Few-shot accuracy over a set of episodes; `str(result)` reads "97.12 ± 0.31%".

  `mean` and `ci95` are fractions in [0, 1]: `ci95 = 1.96 * std / sqrt(num_episodes)`, with the
  population standard deviation (ddof=0) of the per-episode accuracies.
  """
  mean: float               # mean per-episode accuracy in [0, 1]
  ci95: float               # half-width of the 95% confidence interval of the mean
  accuracies: np.ndarray    # [num_episodes] float64 accuracy of each episode, episode order
  num_ways: int
  num_shots: int
  num_episodes: int

  def __str__(self) -> str:
    return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f}%"


def result_from_accuracies(accuracies, *, num_ways: int, num_shots: int) -> FewShotResult:
  """Summarises per-episode accuracies as mean ± 1.96·std/√n (std with ddof=0).

  Args:
    accuracies: [num_episodes] accuracies in [0, 1].
    num_ways: N, recorded in the result.
    num_shots: K, recorded in the result.

  Returns:
    A `FewShotResult`.
  """
  accuracies = np.asarray(accuracies, np.float64).reshape(-1)
  if accuracies.size == 0:
    raise ValueError("accuracies is empty: need at least one episode")
  num_episodes = accuracies.size
  return FewShotResult(
      mean=float(accuracies.mean()),
      ci95=float(1.96 * accuracies.std(ddof=0) / math.sqrt(num_episodes)),
      accuracies=accuracies,
      num_ways=num_ways,
      num_shots=num_shots,
      num_episodes=num_episodes,
  )


def episode_keys(seed: int, index) -> tuple[PRNGKey, PRNGKey]:
  """The keys of evaluation episode `index`: one to sample it, one for its classifier.

  `key = fold_in(key(seed), index)` is split by purpose, so the episode (classes, images and
  labels) is `tasks.sample_episode(key_episode, pool, ...)`, a pure function of (seed, index).

  Args:
    seed: the evaluation seed (a Python int).
    index: the episode index; an int or an int32 scalar array (traceable).

  Returns:
    `(key_episode, key_classify)`.
  """
  key = jax.random.fold_in(jax.random.key(seed), index)
  key_episode, key_classify = jax.random.split(key)
  return key_episode, key_classify


@functools.lru_cache(maxsize=64)
def prototype_classifier(embed_fn: EmbedFn, *, num_ways: int,
                         takes_params: bool = False) -> ClassifyFn:
  """A `classify_fn` for `few_shot_classifier`: nearest prototype by cosine similarity.

  Prototype n is the normalised mean of the L2-normalised support embeddings of class n, and the
  logits are the cosine similarities `losses.prototype_logits(..., distance="cosine")` (design.md
  §1.3 without the temperature, which does not change the argmax). Support and query are
  embedded by separate calls of `embed_fn`, so a model normalising with batch statistics sees
  the support batch and the query batch separately, as in MAML.

  Cached: the same `embed_fn` gives the same classifier, so its compiled evaluation is reused.

  Args:
    embed_fn: `fn(images [B, H, W, C] float32 in [0, 1]) -> embeddings [B, D]`, or
      `fn(params, images)` with `takes_params`.
    num_ways: N.
    takes_params: `embed_fn` (and the returned classifier) take parameters first.

  Returns:
    `classify_fn([params,] key, support, support_labels, query) -> logits [N*Q, N]`.
  """
  def classify_fn(*args):
    params, (key, support, support_labels, query) = (
        (args[0], args[1:]) if takes_params else (None, args))
    del key  # Prototypes are deterministic.
    embed = functools.partial(embed_fn, params) if takes_params else embed_fn
    return losses.prototype_logits(embed(support), support_labels, embed(query),
                                   num_ways=num_ways, distance="cosine")
  return classify_fn


def _check_counts(**counts):
  """ValueError naming the first count that is not an int >= 1."""
  for name, value in counts.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name}={value!r} must be an int >= 1")


def _episode_mesh(devices) -> jax.sharding.Mesh:
  """The 1-D mesh each batch of episodes is split over."""
  return jax.sharding.Mesh(np.asarray(devices), ("episodes",))


@functools.lru_cache(maxsize=64)
def make_batch_accuracy(classify_fn: ClassifyFn, *, num_ways: int, num_shots: int,
                        num_queries: int, seed: int, batch_size: int,
                        takes_params: bool = False, episodes_per_chunk: int = 1,
                        devices: Optional[tuple] = None) -> Callable:
  """The jitted step of `few_shot_classifier`: accuracies of `batch_size` consecutive episodes.

  Exposed so a caller (a benchmark, a custom loop) can time or drive batches without
  recompiling: the returned function is traced once per pool shape, whatever `start`, and
  (cached) the same arguments return the same function.

  Args:
    classify_fn: `fn(key, support, support_labels, query) -> logits [N*Q, N]`, one episode.
    num_ways: N.
    num_shots: K.
    num_queries: Q.
    seed: selects the episodes (see `episode_keys`).
    batch_size: B, episodes per call; a multiple of `len(devices) * episodes_per_chunk`.
    takes_params: call `classify_fn(params, key, ...)`, params a traced argument, so new
      parameter values of the same shapes reuse the compilation.
    episodes_per_chunk: episodes vmapped together; each device runs its share of the batch as
      a `lax.map` over chunks of this many. Small chunks keep the activations of an episode
      in cache: on a CPU one episode at a time is ~1.7x faster than 50 vmapped
      (docs/PERFORMANCE.md). The accuracies do not depend on it.
    devices: the batch is split over these devices (`shard_map`, pool and parameters
      replicated); default: every local device. The accuracies do not depend on it.

  Returns:
    `accuracies(pool, start, params=None) -> [B] float32`, the accuracies of episodes
    start .. start+B-1 (start an int32 scalar).

  Raises:
    ValueError: if `batch_size` is not a multiple of `len(devices) * episodes_per_chunk`.
  """
  devices = tuple(jax.local_devices() if devices is None else devices)
  _check_counts(batch_size=batch_size, episodes_per_chunk=episodes_per_chunk)
  if not devices:
    raise ValueError("devices must name at least one device")
  if batch_size % (len(devices) * episodes_per_chunk):
    raise ValueError(f"batch_size={batch_size} must be a multiple of len(devices) * "
                     f"episodes_per_chunk = {len(devices)} * {episodes_per_chunk}")

  def accuracy(params, pool, index):
    key_episode, key_classify = episode_keys(seed, index)
    task = tasks.sample_episode(key_episode, pool, num_ways=num_ways, num_shots=num_shots,
                                num_queries=num_queries)
    head = (params,) if takes_params else ()
    logits = classify_fn(*head, key_classify, task.support, task.support_labels, task.query)
    if logits.shape != (num_ways * num_queries, num_ways):
      raise ValueError(f"classify_fn must return logits [N*Q, N] = "
                       f"[{num_ways * num_queries}, {num_ways}], got {logits.shape}")
    return jnp.mean(jnp.argmax(logits, axis=-1) == task.query_labels)

  def device_accuracies(params, pool, indices):
    chunks = indices.reshape(-1, episodes_per_chunk)
    chunk_accuracies = jax.lax.map(
        lambda chunk: jax.vmap(accuracy, in_axes=(None, None, 0))(params, pool, chunk), chunks)
    return chunk_accuracies.reshape(-1)

  mesh = _episode_mesh(devices)
  # No collectives inside: each device's episodes are independent. Without the varying-axes
  # check, any user classify_fn (scans with replicated carries, custom primitives) runs as is.
  sharded_accuracies = jax.shard_map(
      device_accuracies, mesh=mesh, in_specs=(P(), P(), P("episodes")),
      out_specs=P("episodes"), check_vma=False)

  # `start` is traced, so every batch (the padded last one too) reuses one compilation.
  @jax.jit
  def accuracies(pool, start, params=None):
    indices = start + jnp.arange(batch_size, dtype=jnp.int32)
    return sharded_accuracies(params, pool, indices)

  return accuracies


def few_shot_classifier(classify_fn: ClassifyFn, dataset: Union[Dataset, tasks.LabeledPool], *,
                        num_ways: int, num_shots: int, num_queries: int = 15,
                        num_episodes: int = 2000, seed: int = 0, batch_size: int = 50,
                        progress: bool = True, params=None, episodes_per_chunk: int = 1,
                        devices: Optional[tuple] = None) -> FewShotResult:
  """N-way K-shot accuracy of any per-episode classifier on deterministic episodes.

  Episode i is `tasks.sample_episode(episode_keys(seed, i)[0], pool, ...)` (no augmentation);
  the classifier gets `episode_keys(seed, i)[1]`, so stochastic classifiers (an inner loop on
  the labeled support, dropout) are reproducible too. A query is correct when the argmax of its
  logits (ties to the lowest class) is its label.

  Args:
    classify_fn: `fn(key, support [N*K, H, W, C], support_labels [N*K], query [N*Q, H, W, C])
      -> logits [N*Q, N]` for one episode; jittable and vmappable. Images are float32 in [0, 1].
    dataset: a `Dataset` of the evaluation classes, or a `LabeledPool` already on device.
    num_ways: N.
    num_shots: K support images per class.
    num_queries: Q query images per class (15 in the standard protocol).
    num_episodes: how many episodes (2000 for reported numbers, 600 for quick checks).
    seed: selects the episodes; the same seed gives the same episodes in every run.
    batch_size: episodes per jitted call (each device holds one chunk's activations at a
      time). Rounded up to a multiple of `len(devices) * episodes_per_chunk`.
    progress: show a tqdm progress bar.
    params: if given, `classify_fn(params, key, ...)` receives them as a traced argument: a
      training loop evaluating new parameters reuses one compilation.
    episodes_per_chunk: episodes vmapped together inside a batch (see `make_batch_accuracy`).
    devices: split each batch over these devices; default every local device (on a CPU, run
      with `XLA_FLAGS=--xla_force_host_platform_device_count=<cores>` for one per core).

  Returns:
    A `FewShotResult` (mean and ci95 as fractions; `str` formats them as percentages).

  Raises:
    ValueError: if the dataset is empty, num_ways exceeds its classes, a class has fewer than
      num_shots + num_queries images, or a count is < 1.
  """
  _check_counts(num_episodes=num_episodes, batch_size=batch_size,
                episodes_per_chunk=episodes_per_chunk)
  devices = tuple(jax.local_devices() if devices is None else devices)
  unit = len(devices) * int(episodes_per_chunk)
  batch_size = -(-min(int(batch_size), int(num_episodes)) // unit) * unit
  pool = dataset if isinstance(dataset, tasks.LabeledPool) else tasks.labeled_pool(dataset)
  # Replicated once per call, not copied to every device by every batch.
  pool = jax.device_put(pool, jax.sharding.NamedSharding(_episode_mesh(devices), P()))
  # Checks num_ways, num_shots and num_queries against the pool (ValueError) before compiling.
  jax.eval_shape(lambda pool: tasks.sample_episode_indices(
      jax.random.key(0), pool, num_ways=num_ways, num_shots=num_shots,
      num_queries=num_queries), pool)

  batch_accuracy = make_batch_accuracy(classify_fn, num_ways=num_ways, num_shots=num_shots,
                                       num_queries=num_queries, seed=seed, batch_size=batch_size,
                                       takes_params=params is not None,
                                       episodes_per_chunk=int(episodes_per_chunk),
                                       devices=devices)
  evaluate_batch = lambda pool, start: batch_accuracy(pool, start, params)
  starts = range(0, num_episodes, batch_size)
  accuracies = []
  with tqdm.tqdm(total=num_episodes, disable=not progress, desc=f"{num_ways}-way "
                 f"{num_shots}-shot", unit="episode") as bar:
    # Dispatch batch b+1 before reading batch b back, so the device never waits for the host.
    pending = evaluate_batch(pool, jnp.int32(starts[0]))
    for b, start in enumerate(starts):
      current = pending
      if b + 1 < len(starts):
        pending = evaluate_batch(pool, jnp.int32(starts[b + 1]))
      batch = np.asarray(current)[:num_episodes - start]
      accuracies.append(batch)
      bar.update(batch.size)
  return result_from_accuracies(np.concatenate(accuracies), num_ways=num_ways,
                                num_shots=num_shots)


def few_shot(embed_fn: EmbedFn, dataset: Union[Dataset, tasks.LabeledPool], *, num_ways: int,
             num_shots: int, num_queries: int = 15, num_episodes: int = 2000, seed: int = 0,
             batch_size: int = 50, progress: bool = True, params=None,
             episodes_per_chunk: int = 1, devices: Optional[tuple] = None) -> FewShotResult:
  """N-way K-shot accuracy of an embedding with the nearest-prototype (cosine) classifier.

  The "no adaptation" evaluation of design.md §1.7: embed support and query with `embed_fn`,
  prototype = normalised mean of the L2-normalised support embeddings of a class, each query
  takes the class of highest cosine similarity. Same episodes as `few_shot_classifier`.

  Args:
    embed_fn: `fn(images [B, H, W, C] float32 in [0, 1]) -> embeddings [B, D]`; jittable. Arrays
      it closes over are constants of the trace; pass `params` instead to compile once.
    dataset: a `Dataset` of the evaluation classes, or a `LabeledPool` already on device.
    num_ways: N.
    num_shots: K.
    num_queries: Q (15 in the standard protocol).
    num_episodes: how many episodes.
    seed: selects the episodes.
    batch_size: episodes per jitted call.
    progress: show a tqdm progress bar.
    params: if given, `embed_fn(params, images)`, params a traced argument (see
      `few_shot_classifier`).
    episodes_per_chunk: episodes vmapped together (see `few_shot_classifier`).
    devices: split each batch over these devices; default every local device.

  Returns:
    A `FewShotResult`.
  """
  classify_fn = prototype_classifier(embed_fn, num_ways=num_ways,
                                     takes_params=params is not None)
  return few_shot_classifier(
      classify_fn, dataset, num_ways=num_ways, num_shots=num_shots, num_queries=num_queries,
      num_episodes=num_episodes, seed=seed, batch_size=batch_size, progress=progress,
      params=params, episodes_per_chunk=episodes_per_chunk, devices=devices)
