"""Task construction on device: unsupervised tasks and labeled few-shot episodes.

Both samplers are pure functions of a key and device arrays, so they run inside a jitted
training or evaluation step: indices come from `jax.random`, images are gathered with `jnp.take`,
augmentations are vmapped per view, and every shape is static. Invalid `num_ways`, `num_shots`,
`num_support` or `num_queries` raise a `ValueError` naming the field before anything is traced.

Shapes: N ways, S support views (unsupervised) or K shots (labeled) per class, Q queries per
class, T tasks, images H×W with C channels. Every task is class-major: the support labels are
`[0]*S + [1]*S + ... + [N-1]*S`, and the same for the query.

Example:
  >>> import jax, numpy as np
  >>> from jmeta import tasks
  >>> from jmeta.data.dataset import Dataset
  >>> data = Dataset(np.zeros((12, 5, 5, 1), np.uint8), np.arange(12, dtype=np.int32) % 3,
  ...                ('a', 'b', 'c'))
  >>> pool = tasks.labeled_pool(data)
  >>> task = tasks.sample_episode(jax.random.key(0), pool, num_ways=2, num_shots=1,
  ...                             num_queries=2)
  >>> task.support.shape, task.query_labels.tolist()
  ((2, 5, 5, 1), [0, 0, 1, 1])
"""
import functools
import operator
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.data.dataset import Dataset
from jmeta.types import PRNGKey, Task

AugmentFn = Callable[[PRNGKey, jax.Array], jax.Array]  # (key, image [H, W, C]) -> view


# ------------------------------------------------------------------------------------------------
# Validation (host side, on Python ints and static shapes only).


def _check_count(name: str, value, *, minimum: int = 1) -> int:
  """Returns `value` as a Python int, or raises if it is not an int >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be a Python int, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name}={value} must be >= {minimum}")
  return operator.index(value)


def _check_images(images) -> None:
  if images.ndim != 4:
    raise ValueError(f"images must be [M, H, W, C], got shape {tuple(images.shape)}")
  if images.dtype != jnp.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}")


def _to_float(images: jax.Array) -> jax.Array:
  """uint8 images in 0..255, or float images in [0, 1], as float32 in [0, 1]."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


# ------------------------------------------------------------------------------------------------
# Sampling without replacement.


def _sample_distinct(key: PRNGKey, population, num: int) -> jax.Array:
  """`num` distinct ints drawn uniformly from `[0, population)`, in uniformly random order.

  Robert Floyd's algorithm: O(num²) work however large the population, where
  `jax.random.choice(..., replace=False)` shuffles the whole population (O(M log M) per task,
  which dominates a step that draws 5 images out of 80,000). `population` may be traced (a
  per-class image count); the caller guarantees `population >= num`.

  Args:
    key: a PRNG key.
    population: int or int32 scalar array, the size of the population.
    num: static number of draws.

  Returns:
    [num] int32 distinct values in `[0, population)`.
  """
  key_draws, key_order = jax.random.split(key)
  # Step i draws t uniformly from [0, j] with j = population - num + i; if t was already taken,
  # it takes j instead (which no earlier step can have taken). Every subset is equally likely.
  upper = jnp.asarray(population, jnp.int32) - num + jnp.arange(num, dtype=jnp.int32)
  draws = jax.random.randint(key_draws, (num,), 0, upper + 1, dtype=jnp.int32)

  def take(i, chosen):
    taken = jnp.any(chosen == draws[i])
    return chosen.at[i].set(jnp.where(taken, upper[i], draws[i]))

  chosen = jax.lax.fori_loop(0, num, take, jnp.full((num,), -1, jnp.int32))
  # Floyd's order is biased (late steps favour large values); a shuffle makes it uniform.
  return jax.random.permutation(key_order, chosen)


def _views(key: PRNGKey, images: jax.Array, augment_fn: Optional[AugmentFn],
           num_views: int) -> jax.Array:
  """`num_views` augmented views of each image, class-major.

  Args:
    key: a PRNG key.
    images: [N, H, W, C] float32.
    augment_fn: `fn(key, image) -> view`, or None for the images themselves.
    num_views: static number of views per image.

  Returns:
    [N*num_views, H', W', C'] float32, views of image n at rows n*num_views .. (n+1)*num_views-1.
  """
  num_images = images.shape[0]
  if augment_fn is None:
    return jnp.repeat(images, num_views, axis=0)
  keys = jax.random.split(key, (num_images, num_views))
  per_image = jax.vmap(augment_fn, in_axes=(0, None))                  # one image, its views
  views = jax.vmap(per_image, in_axes=(0, 0))(keys, images)            # [N, V, H', W', C']
  return views.reshape((num_images * num_views,) + views.shape[2:])


def _class_major_labels(num_ways: int, num_per_class: int) -> jax.Array:
  return jnp.repeat(jnp.arange(num_ways, dtype=jnp.int32), num_per_class)


# ------------------------------------------------------------------------------------------------
# Unsupervised tasks (BMSSL/UMTRA task reconstruction, design.md §1.1).


def _check_unsupervised(images, *, num_ways, num_support, num_queries, augment_fn) -> None:
  _check_images(images)
  _check_count("num_ways", num_ways)
  _check_count("num_support", num_support)
  _check_count("num_queries", num_queries)
  if num_ways > images.shape[0]:
    raise ValueError(f"num_ways={num_ways} exceeds the {images.shape[0]} images in the pool")
  if augment_fn is None:
    raise ValueError("augment_fn is required for unsupervised tasks (views of one image are the "
                     "only signal); pass `lambda key, image: image` to disable augmentation")


def sample_unsupervised_task(key: PRNGKey, images: jax.Array, *, num_ways: int, num_support: int,
                             num_queries: int, augment_fn: AugmentFn) -> Task:
  """An N-way task built from N distinct unlabeled images and augmented views of them.

  Image n (drawn without replacement) is pseudo-class n; its support set is `num_support`
  augmented views and its query set `num_queries` further independent views.

  References:
    Khodadadeh et al., "Unsupervised Meta-Learning for Few-Shot Image Classification" (UMTRA),
    NeurIPS 2019; Wang et al., "Bootstrapped Meta Self-supervised Learning", arXiv 2308.14267.

  Args:
    key: a PRNG key.
    images: [M, H, W, C] unlabeled images, uint8 in 0..255 or float in [0, 1].
    num_ways: N, the number of source images (pseudo-classes), 1 <= N <= M.
    num_support: S, support views per image, >= 1 (contrastive inner losses need S >= 2; they
      check it themselves).
    num_queries: Q, query views per image, >= 1.
    augment_fn: `fn(key, image [H, W, C] float32) -> view [H', W', C']`, vmapped per view.

  Returns:
    A `Task`: support [N*S, H', W', C'] float32, support_labels [N*S] int32
    (`repeat(arange(N), S)`), query [N*Q, H', W', C'], query_labels [N*Q] int32.

  Raises:
    ValueError: if num_ways exceeds the number of images, or a count is < 1.
  """
  _check_unsupervised(images, num_ways=num_ways, num_support=num_support,
                      num_queries=num_queries, augment_fn=augment_fn)
  key_images, key_support, key_query = jax.random.split(key, 3)
  indices = _sample_distinct(key_images, images.shape[0], num_ways)         # [N]
  sources = _to_float(jnp.take(images, indices, axis=0, mode="clip"))      # [N, H, W, C]
  return Task(
      support=_views(key_support, sources, augment_fn, num_support),
      support_labels=_class_major_labels(num_ways, num_support),
      query=_views(key_query, sources, augment_fn, num_queries),
      query_labels=_class_major_labels(num_ways, num_queries),
  )


def sample_unsupervised_tasks(key: PRNGKey, images: jax.Array, *, num_tasks: int, num_ways: int,
                              num_support: int, num_queries: int, augment_fn: AugmentFn) -> Task:
  """`num_tasks` independent unsupervised tasks (`sample_unsupervised_task` vmapped over keys).

  Args:
    key: a PRNG key, split into one key per task.
    images: [M, H, W, C] unlabeled images, uint8 in 0..255 or float in [0, 1].
    num_tasks: T >= 1.
    num_ways: N; see `sample_unsupervised_task`.
    num_support: S.
    num_queries: Q.
    augment_fn: `fn(key, image) -> view`.

  Returns:
    A batched `Task`: support [T, N*S, H', W', C'], support_labels [T, N*S], query
    [T, N*Q, H', W', C'], query_labels [T, N*Q].
  """
  num_tasks = _check_count("num_tasks", num_tasks)
  sample = functools.partial(sample_unsupervised_task, num_ways=num_ways, num_support=num_support,
                             num_queries=num_queries, augment_fn=augment_fn)
  _check_unsupervised(images, num_ways=num_ways, num_support=num_support,
                      num_queries=num_queries, augment_fn=augment_fn)
  return jax.vmap(sample, in_axes=(0, None))(jax.random.split(key, num_tasks), images)


# ------------------------------------------------------------------------------------------------
# Labeled episodes (supervised baselines and evaluation, design.md §3).


class LabeledPool(NamedTuple):
  """A labeled dataset laid out for on-device episode sampling; build it with `labeled_pool`.

  A pytree whose leaves are the three arrays; the last three fields are static (pytree aux data),
  so `sample_episode` can check `num_shots + num_queries` against the smallest class even when
  the pool is an argument of a jitted function.
  """
  images: jax.Array        # [M, H, W, C] uint8 in 0..255 (or float in [0, 1])
  class_table: jax.Array   # [num_classes, max_count] int32 image indices, rows padded with -1
  class_counts: jax.Array  # [num_classes] int32 images per class (valid prefix of each row)
  min_class_size: int      # static: min(class_counts)
  smallest_class: int      # static: the index of a class with min_class_size images
  smallest_class_name: str  # static: its name, for error messages

  @property
  def num_classes(self) -> int:
    return self.class_table.shape[0]


jax.tree_util.register_pytree_node(
    LabeledPool,
    lambda pool: (tuple(pool[:3]), tuple(pool[3:])),
    lambda static, arrays: LabeledPool(*arrays, *static),
)


def labeled_pool(dataset: Dataset) -> LabeledPool:
  """Moves a labeled dataset to device as a `LabeledPool` (host side, not jittable).

  Args:
    dataset: a `Dataset`: images [M, H, W, C] uint8, labels [M] int32 in 0..num_classes-1.

  Returns:
    A `LabeledPool` whose `class_table[c, :class_counts[c]]` lists the images of class c in
    dataset order.

  Raises:
    ValueError: if the dataset is empty or its labels are out of range.
  """
  images = np.asarray(dataset.images)
  labels = np.asarray(dataset.labels)
  num_classes = len(dataset.class_names)
  if images.shape[0] == 0 or num_classes == 0:
    raise ValueError(f"empty pool: the dataset has {images.shape[0]} images and "
                     f"{num_classes} classes")
  _check_images(images)
  if labels.shape != images.shape[:1]:
    raise ValueError(f"labels must be [{images.shape[0]}], got shape {labels.shape}")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
  counts = np.bincount(labels, minlength=num_classes)
  order = np.argsort(labels, kind="stable")                       # images grouped by class
  sorted_labels = labels[order]
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  slots = np.arange(labels.shape[0]) - starts[sorted_labels]      # position within its class
  table = np.full((num_classes, counts.max()), -1, np.int32)
  table[sorted_labels, slots] = order
  smallest = int(np.argmin(counts))
  return LabeledPool(
      images=jax.device_put(images),
      class_table=jax.device_put(table),
      class_counts=jax.device_put(counts.astype(np.int32)),
      min_class_size=int(counts[smallest]),
      smallest_class=smallest,
      smallest_class_name=str(dataset.class_names[smallest]),
  )


class EpisodeIndices(NamedTuple):
  """Which classes and images an episode uses; leading [T] axis when batched."""
  classes: jax.Array  # [N] int32 distinct pool classes; episode label n is pool class classes[n]
  support: jax.Array  # [N*K] int32 indices into pool.images, class-major
  query: jax.Array    # [N*Q] int32 indices into pool.images, class-major, disjoint from support


def _check_episode(pool: LabeledPool, *, num_ways, num_shots, num_queries) -> None:
  if not isinstance(pool, LabeledPool):
    raise TypeError(f"pool must be a LabeledPool (see labeled_pool), got {type(pool).__name__}")
  if pool.num_classes == 0 or pool.images.shape[0] == 0:
    raise ValueError("empty pool: it has no classes or no images")
  _check_count("num_ways", num_ways)
  _check_count("num_shots", num_shots)
  _check_count("num_queries", num_queries)
  if num_ways > pool.num_classes:
    raise ValueError(f"num_ways={num_ways} exceeds the {pool.num_classes} classes in the pool")
  if num_shots + num_queries > pool.min_class_size:
    raise ValueError(
        f"num_shots + num_queries = {num_shots} + {num_queries} exceeds the "
        f"{pool.min_class_size} images of class {pool.smallest_class} "
        f"({pool.smallest_class_name!r}), the smallest class in the pool")


def sample_episode_indices(key: PRNGKey, pool: LabeledPool, *, num_ways: int, num_shots: int,
                           num_queries: int) -> EpisodeIndices:
  """The classes and image indices of an N-way K-shot episode with Q queries per class.

  The N classes are distinct and uniformly random; within each class, K + Q distinct images are
  drawn uniformly, the first K for the support and the other Q for the query, so support and
  query never share an image.

  Args:
    key: a PRNG key.
    pool: a `LabeledPool`.
    num_ways: N, 1 <= N <= pool.num_classes.
    num_shots: K >= 1 support images per class.
    num_queries: Q >= 1 query images per class; K + Q must not exceed the smallest class.

  Returns:
    `EpisodeIndices`: classes [N], support [N*K] and query [N*Q] int32, class-major.

  Raises:
    ValueError: if the pool is empty, num_ways exceeds its classes, a class has fewer than K + Q
      images, or a count is < 1.
  """
  _check_episode(pool, num_ways=num_ways, num_shots=num_shots, num_queries=num_queries)
  key_classes, key_images = jax.random.split(key)
  classes = _sample_distinct(key_classes, pool.num_classes, num_ways)              # [N]
  counts = jnp.take(pool.class_counts, classes, mode="clip")                        # [N]
  keys = jax.random.split(key_images, num_ways)
  slots = jax.vmap(_sample_distinct, in_axes=(0, 0, None))(
      keys, counts, num_shots + num_queries)                                        # [N, K+Q]
  rows = jnp.take(pool.class_table, classes, axis=0, mode="clip")                   # [N, max]
  images = jnp.take_along_axis(rows, slots, axis=1, mode="clip")                    # [N, K+Q]
  return EpisodeIndices(
      classes=classes,
      support=images[:, :num_shots].reshape(-1),
      query=images[:, num_shots:].reshape(-1),
  )


def gather_episode(key: PRNGKey, pool: LabeledPool, indices: EpisodeIndices, *,
                   augment_fn: Optional[AugmentFn] = None) -> Task:
  """The `Task` of an episode's indices: gathered images, optionally augmented, and labels.

  Args:
    key: a PRNG key for the augmentations (unused when augment_fn is None).
    pool: the `LabeledPool` the indices refer to.
    indices: `EpisodeIndices` of one episode (classes [N], support [N*K], query [N*Q]).
    augment_fn: optional `fn(key, image [H, W, C] float32) -> view`, one view per image.

  Returns:
    A `Task`: support [N*K, H, W, C] float32 in [0, 1], support_labels [N*K] int32
    (`repeat(arange(N), K)`), query [N*Q, H, W, C], query_labels [N*Q].
  """
  num_ways = indices.classes.shape[0]
  num_shots = indices.support.shape[0] // num_ways
  num_queries = indices.query.shape[0] // num_ways
  key_support, key_query = jax.random.split(key)
  support = _to_float(jnp.take(pool.images, indices.support, axis=0, mode="clip"))
  query = _to_float(jnp.take(pool.images, indices.query, axis=0, mode="clip"))
  return Task(
      support=_views(key_support, support, augment_fn, 1),
      support_labels=_class_major_labels(num_ways, num_shots),
      query=_views(key_query, query, augment_fn, 1),
      query_labels=_class_major_labels(num_ways, num_queries),
  )


def sample_episode(key: PRNGKey, pool: LabeledPool, *, num_ways: int, num_shots: int,
                   num_queries: int, augment_fn: Optional[AugmentFn] = None) -> Task:
  """An N-way K-shot labeled episode with Q queries per class.

  Equivalent to `key_indices, key_views = jax.random.split(key)` followed by
  `gather_episode(key_views, pool, sample_episode_indices(key_indices, pool, ...))`.

  Args:
    key: a PRNG key.
    pool: a `LabeledPool` (see `labeled_pool`).
    num_ways: N, 1 <= N <= pool.num_classes.
    num_shots: K >= 1 support images per class.
    num_queries: Q >= 1 query images per class; K + Q must not exceed the smallest class.
    augment_fn: optional `fn(key, image [H, W, C] float32) -> view`, one view per image.

  Returns:
    A `Task`: support [N*K, H, W, C] float32 in [0, 1], support_labels [N*K] int32 in 0..N-1
    (class-major), query [N*Q, H, W, C], query_labels [N*Q]; label n is the pool class
    `classes[n]` of the episode's indices.

  Raises:
    ValueError: see `sample_episode_indices`.
  """
  key_indices, key_views = jax.random.split(key)
  indices = sample_episode_indices(key_indices, pool, num_ways=num_ways, num_shots=num_shots,
                                   num_queries=num_queries)
  return gather_episode(key_views, pool, indices, augment_fn=augment_fn)


def sample_episodes(key: PRNGKey, pool: LabeledPool, *, num_episodes: int, num_ways: int,
                    num_shots: int, num_queries: int,
                    augment_fn: Optional[AugmentFn] = None) -> Task:
  """`num_episodes` independent episodes (`sample_episode` vmapped over split keys).

  Args:
    key: a PRNG key, split into one key per episode.
    pool: a `LabeledPool`.
    num_episodes: T >= 1.
    num_ways: N; see `sample_episode`.
    num_shots: K.
    num_queries: Q.
    augment_fn: optional `fn(key, image) -> view`.

  Returns:
    A batched `Task`: support [T, N*K, H, W, C], support_labels [T, N*K], query
    [T, N*Q, H, W, C], query_labels [T, N*Q].
  """
  num_episodes = _check_count("num_episodes", num_episodes)
  _check_episode(pool, num_ways=num_ways, num_shots=num_shots, num_queries=num_queries)
  sample = functools.partial(sample_episode, num_ways=num_ways, num_shots=num_shots,
                             num_queries=num_queries, augment_fn=augment_fn)
  return jax.vmap(sample, in_axes=(0, None))(jax.random.split(key, num_episodes), pool)
