"""Tests for jmeta.tasks: unsupervised tasks and labeled episodes."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta import tasks
from jmeta.data.dataset import Dataset

NUM_CLASSES, PER_CLASS, H, W = 12, 7, 10, 9


def make_dataset(num_classes=NUM_CLASSES, per_class=PER_CLASS, *, small_class=None):
  """Odd-shaped images whose pixels encode their class and their index in the dataset.

  Class c sets pixel (c // W, c % W) to 255; image m stores m + 1 in pixel (H-1, W-1). Labels
  are shuffled so the pool must group them. `small_class=(c, n)` keeps only n images of class c.
  """
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
  if small_class is not None:
    c, n = small_class
    labels = np.concatenate([labels[labels != c], np.full(n, c, np.int32)])
  labels = np.random.default_rng(0).permutation(labels)
  images = np.zeros((labels.size, H, W, 1), np.uint8)
  images[np.arange(labels.size), labels // W, labels % W, 0] = 255
  images[:, H - 1, W - 1, 0] = np.arange(labels.size) + 1
  names = tuple(f"char{c:02d}" for c in range(num_classes))
  return Dataset(images, labels, names)


def image_class(images):
  """The class encoded in float images [..., H, W, 1]."""
  flat = np.asarray(images)[..., :2, :, 0].reshape(images.shape[:-3] + (2 * W,))
  return flat.argmax(-1)


def image_index(images):
  """The dataset index encoded in float images [..., H, W, 1]."""
  return np.rint(np.asarray(images)[..., H - 1, W - 1, 0] * 255).astype(int) - 1


def identity(key, image):
  del key
  return image


def add_noise(key, image):
  return image + jax.random.uniform(key, image.shape)


# ------------------------------------------------------------------------------------------------
# Sampling without replacement.


def test_sample_distinct_is_uniform_over_ordered_subsets():
  keys = jax.random.split(jax.random.key(0), 6000)
  draws = np.asarray(jax.jit(jax.vmap(lambda k: tasks._sample_distinct(k, 5, 3)))(keys))
  assert ((draws >= 0) & (draws < 5)).all()
  assert all(len(set(row)) == 3 for row in draws.tolist())
  counts = {}
  for row in map(tuple, draws.tolist()):
    counts[row] = counts.get(row, 0) + 1
  assert set(counts) == set(itertools.permutations(range(5), 3))   # all 60 ordered triples
  assert 50 < min(counts.values()) and max(counts.values()) < 160  # expected 100 each


def test_sample_distinct_traced_population():
  keys = jax.random.split(jax.random.key(1), 300)
  populations = jnp.arange(300) % 4 + 3                                     # 3..6
  draws = np.asarray(jax.vmap(tasks._sample_distinct, in_axes=(0, 0, None))(keys, populations, 3))
  assert (draws < np.asarray(populations)[:, None]).all() and (draws >= 0).all()
  assert all(len(set(row)) == 3 for row in draws.tolist())
  full = draws[np.asarray(populations) == 3]
  assert (np.sort(full, axis=1) == [0, 1, 2]).all()                         # takes everything


# ------------------------------------------------------------------------------------------------
# Labeled pool and episodes.


def test_labeled_pool_groups_images_by_class():
  data = make_dataset(small_class=(4, 5))
  pool = tasks.labeled_pool(data)
  table, counts = np.asarray(pool.class_table), np.asarray(pool.class_counts)
  assert pool.num_classes == NUM_CLASSES and table.dtype == np.int32
  np.testing.assert_array_equal(counts, np.bincount(data.labels))
  for c in range(NUM_CLASSES):
    np.testing.assert_array_equal(table[c, :counts[c]], np.flatnonzero(data.labels == c))
    assert (table[c, counts[c]:] == -1).all()
  assert (pool.min_class_size, pool.smallest_class, pool.smallest_class_name) == (5, 4, "char04")


def test_pool_static_fields_survive_jit_and_tree_map():
  pool = tasks.labeled_pool(make_dataset())
  assert jax.tree_util.tree_leaves(pool)[0] is pool.images
  assert len(jax.tree_util.tree_leaves(pool)) == 3
  seen = jax.jit(lambda p: p.class_counts[0] * 0 + p.min_class_size)(pool)  # static int in jit
  assert int(seen) == PER_CLASS
  assert jax.tree_util.tree_map(lambda x: x, pool).smallest_class_name == pool.smallest_class_name


def test_episode_indices_are_valid():
  data = make_dataset()
  pool = tasks.labeled_pool(data)
  num_ways, num_shots, num_queries = 5, 2, 4
  sample = functools.partial(tasks.sample_episode_indices, pool=pool, num_ways=num_ways,
                             num_shots=num_shots, num_queries=num_queries)
  indices = jax.jit(jax.vmap(sample))(jax.random.split(jax.random.key(0), 200))
  classes = np.asarray(indices.classes)
  support = np.asarray(indices.support).reshape(200, num_ways, num_shots)
  query = np.asarray(indices.query).reshape(200, num_ways, num_queries)
  for t in range(200):
    assert len(set(classes[t])) == num_ways
    images = np.concatenate([support[t].ravel(), query[t].ravel()])
    assert len(set(images)) == images.size                     # no image in support and query
    np.testing.assert_array_equal(data.labels[support[t]], classes[t][:, None] + 0 * support[t])
    np.testing.assert_array_equal(data.labels[query[t]], classes[t][:, None] + 0 * query[t])
  # Every class and every image of a class gets drawn.
  assert set(classes.ravel()) == set(range(NUM_CLASSES))
  assert set(support.ravel()) | set(query.ravel()) == set(range(data.labels.size))


def test_sample_episode_images_match_labels_and_indices():
  data = make_dataset()
  pool = tasks.labeled_pool(data)
  key = jax.random.key(3)
  task = tasks.sample_episode(key, pool, num_ways=4, num_shots=3, num_queries=2)
  assert task.support.shape == (12, H, W, 1) and task.query.shape == (8, H, W, 1)
  assert task.support.dtype == jnp.float32 and float(task.support.max()) <= 1.0
  np.testing.assert_array_equal(task.support_labels, np.repeat(np.arange(4), 3))
  np.testing.assert_array_equal(task.query_labels, np.repeat(np.arange(4), 2))
  key_indices, _ = jax.random.split(key)
  indices = tasks.sample_episode_indices(key_indices, pool, num_ways=4, num_shots=3,
                                         num_queries=2)
  np.testing.assert_array_equal(image_index(task.support), indices.support)
  np.testing.assert_array_equal(image_index(task.query), indices.query)
  classes = np.asarray(indices.classes)
  np.testing.assert_array_equal(image_class(task.support), classes[task.support_labels])
  np.testing.assert_array_equal(image_class(task.query), classes[task.query_labels])


def test_sample_episode_augments_each_image_independently():
  pool = tasks.labeled_pool(make_dataset())
  sample = functools.partial(tasks.sample_episode, pool=pool, num_ways=3, num_shots=2,
                             num_queries=2)
  plain, noisy = sample(jax.random.key(0)), sample(jax.random.key(0), augment_fn=add_noise)
  noise = np.asarray(noisy.support - plain.support)
  assert noise.min() >= 0 and noise.max() <= 1 and len({float(n.sum()) for n in noise}) == 6
  np.testing.assert_array_equal(noisy.support_labels, plain.support_labels)


def test_sample_episodes_vmap_equals_loop_and_jit_equals_eager():
  pool = tasks.labeled_pool(make_dataset())
  kwargs = dict(num_ways=3, num_shots=1, num_queries=2, augment_fn=add_noise)
  key = jax.random.key(5)
  batched = jax.jit(functools.partial(tasks.sample_episodes, num_episodes=4, **kwargs))(key, pool)
  single = jax.jit(functools.partial(tasks.sample_episode, **kwargs))
  keys = jax.random.split(key, 4)
  for t, key_episode in enumerate(keys):
    for got, want in zip(batched, single(key_episode, pool)):
      np.testing.assert_allclose(got[t], want, rtol=1e-6)
  eager = tasks.sample_episode(keys[1], pool, **kwargs)
  for got, want in zip(eager, single(keys[1], pool)):
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_ways=13, num_shots=1, num_queries=1), "num_ways=13 exceeds the 12 classes"),
    (dict(num_ways=0, num_shots=1, num_queries=1), "num_ways=0"),
    (dict(num_ways=5, num_shots=0, num_queries=1), "num_shots=0"),
    (dict(num_ways=5, num_shots=1, num_queries=0), "num_queries=0"),
    (dict(num_ways=5, num_shots=2, num_queries=6), "num_shots + num_queries"),
])
def test_episode_bad_arguments_raise(kwargs, field):
  pool = tasks.labeled_pool(make_dataset())
  with pytest.raises(ValueError, match=field.replace("+", r"\+")):
    tasks.sample_episode(jax.random.key(0), pool, **kwargs)
  with pytest.raises(ValueError, match=field.replace("+", r"\+")):  # also as a jit argument
    jax.jit(functools.partial(tasks.sample_episodes, num_episodes=2, **kwargs))(
        jax.random.key(0), pool)


def test_small_class_error_names_the_class():
  pool = tasks.labeled_pool(make_dataset(small_class=(7, 3)))
  tasks.sample_episode(jax.random.key(0), pool, num_ways=12, num_shots=1, num_queries=2)
  with pytest.raises(ValueError, match=r"3 images of class 7 \('char07'\)"):
    tasks.sample_episode(jax.random.key(0), pool, num_ways=2, num_shots=1, num_queries=3)


def test_empty_pool_raises():
  empty = Dataset(np.zeros((0, H, W, 1), np.uint8), np.zeros((0,), np.int32), ("a", "b"))
  with pytest.raises(ValueError, match="empty pool"):
    tasks.labeled_pool(empty)
  with pytest.raises(ValueError, match="empty pool"):
    tasks.labeled_pool(Dataset(empty.images, empty.labels, ()))


def test_bad_labels_raise():
  data = make_dataset()
  with pytest.raises(ValueError, match="labels"):
    tasks.labeled_pool(data._replace(labels=data.labels + 1))


# ------------------------------------------------------------------------------------------------
# Unsupervised tasks.


def unlabeled(dtype=np.uint8):
  images = make_dataset().images
  return jnp.asarray(images if dtype == np.uint8 else images / np.float32(255))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_unsupervised_task_views_come_from_distinct_sources(dtype):
  images = unlabeled(dtype)
  task = tasks.sample_unsupervised_task(jax.random.key(0), images, num_ways=6, num_support=2,
                                        num_queries=3, augment_fn=identity)
  assert task.support.shape == (12, H, W, 1) and task.query.shape == (18, H, W, 1)
  assert task.support.dtype == jnp.float32
  np.testing.assert_array_equal(task.support_labels, np.repeat(np.arange(6), 2))
  np.testing.assert_array_equal(task.query_labels, np.repeat(np.arange(6), 3))
  sources = image_index(task.support)[::2]
  assert len(set(sources.tolist())) == 6
  np.testing.assert_array_equal(image_index(task.support), sources[task.support_labels])
  np.testing.assert_array_equal(image_index(task.query), sources[task.query_labels])
  # Identity views are exactly the source images.
  expected = np.asarray(images)[sources].astype(np.float32) / (255 if dtype == np.uint8 else 1)
  np.testing.assert_allclose(task.support, np.repeat(expected, 2, axis=0), rtol=1e-6)
  np.testing.assert_allclose(task.query, np.repeat(expected, 3, axis=0), rtol=1e-6)


def test_unsupervised_task_uses_every_image_when_num_ways_equals_pool():
  images = unlabeled()
  task = tasks.sample_unsupervised_task(jax.random.key(1), images, num_ways=images.shape[0],
                                        num_support=1, num_queries=1, augment_fn=identity)
  assert sorted(image_index(task.support).tolist()) == list(range(images.shape[0]))


def test_unsupervised_views_are_independent():
  task = tasks.sample_unsupervised_task(jax.random.key(2), unlabeled(), num_ways=3, num_support=2,
                                        num_queries=2, augment_fn=add_noise)
  views = np.concatenate([task.support, task.query]).reshape(12, -1)
  assert len({tuple(v) for v in views.round(6).tolist()}) == 12


def test_unsupervised_tasks_vmap_equals_loop_and_jit_equals_eager():
  images = unlabeled()
  kwargs = dict(num_ways=4, num_support=2, num_queries=1, augment_fn=add_noise)
  key = jax.random.key(7)
  batched = jax.jit(functools.partial(tasks.sample_unsupervised_tasks, num_tasks=3, **kwargs))(
      key, images)
  assert batched.support.shape == (3, 8, H, W, 1) and batched.query_labels.shape == (3, 4)
  single = jax.jit(functools.partial(tasks.sample_unsupervised_task, **kwargs))
  keys = jax.random.split(key, 3)
  for t, key_task in enumerate(keys):
    for got, want in zip(batched, single(key_task, images)):
      np.testing.assert_allclose(got[t], want, rtol=1e-6)
  eager = tasks.sample_unsupervised_task(keys[2], images, **kwargs)
  for got, want in zip(eager, single(keys[2], images)):
    np.testing.assert_allclose(got, want, rtol=1e-6)
  assert not np.array_equal(image_index(batched.support[0]), image_index(batched.support[1]))


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_ways=85, num_support=2, num_queries=1), "num_ways=85 exceeds the 84 images"),
    (dict(num_ways=0, num_support=2, num_queries=1), "num_ways=0"),
    (dict(num_ways=5, num_support=0, num_queries=1), "num_support=0"),
    (dict(num_ways=5, num_support=2, num_queries=0), "num_queries=0"),
])
def test_unsupervised_bad_arguments_raise(kwargs, field):
  with pytest.raises(ValueError, match=field):
    tasks.sample_unsupervised_task(jax.random.key(0), unlabeled(), augment_fn=identity, **kwargs)
  with pytest.raises(ValueError, match=field):
    jax.jit(functools.partial(tasks.sample_unsupervised_tasks, num_tasks=2, augment_fn=identity,
                              **kwargs))(jax.random.key(0), unlabeled())


def test_unsupervised_requires_augment_fn_and_int_counts():
  with pytest.raises(ValueError, match="augment_fn"):
    tasks.sample_unsupervised_task(jax.random.key(0), unlabeled(), num_ways=2, num_support=2,
                                   num_queries=1, augment_fn=None)
  with pytest.raises(TypeError, match="num_ways"):
    tasks.sample_unsupervised_task(jax.random.key(0), unlabeled(), num_ways=2.0, num_support=2,
                                   num_queries=1, augment_fn=identity)
