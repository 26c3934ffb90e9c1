"""Tiny, real fixtures for jmeta's tests: small models, fake tasks and finite differences.

Everything here is cheap enough to run on a CPU in milliseconds: a 4-channel, 2-block Conv4 on
8×8 images, a tanh MLP and a linear encoder `f(x) = x W` (closed-form meta-gradients), and tasks
whose views are noisy copies of a few random "source" images, so a contrastive or prototype loss
has something to learn. Fake data and directions come from numpy seeded by the key: in eager
mode every random primitive would otherwise compile, seconds per test. Nothing downloads.

Example:
  >>> import jax
  >>> from jmeta import testing
  >>> model = testing.tiny_conv()
  >>> task = testing.fake_task(jax.random.key(0), num_ways=3, num_support=2, num_queries=2)
  >>> model.apply(model.init(jax.random.key(1)), task.support).shape
  (6, 16)
"""
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.models import conv4
from jmeta.types import Model, Params, PRNGKey, PyTree, Task


def _numpy_generator(key: PRNGKey) -> np.random.Generator:
  """A numpy generator seeded by `key`: fake data needs no XLA compilation, which in eager
  mode would cost seconds per new shape (every random primitive compiles separately)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key).ravel().tolist())


def tiny_conv(*, image_size: int = 8, channels: int = 1, width: int = 4, num_blocks: int = 2,
              norm: str = "batch", num_groups: int = 2, conv_impl: Optional[str] = None,
              conv_bias: Optional[bool] = None) -> Model:
  """Conv4 shrunk to 2 blocks of 4 channels on 8×8 images: a 16-d embedding.

  `conv_impl=None` keeps Conv4's default, so tests exercise what users run.
  """
  kwargs = {} if conv_impl is None else {"conv_impl": conv_impl}
  return conv4.make(image_size=image_size, channels=channels, width=width, num_blocks=num_blocks,
                    norm=norm, num_groups=num_groups, conv_bias=conv_bias, **kwargs)


def linear(*, input_shape: Sequence[int], output_dim: int) -> Model:
  """The linear encoder `f(x) = flatten(x) @ W`, params `{"kernel": W [D, output_dim]}`.

  Its inner-loop meta-gradients have closed forms, so tests can check them analytically.
  """
  input_dim = int(np.prod(input_shape))

  def init(key: PRNGKey) -> Params:  # numpy seeded by key (call outside jit): no compile
    generator = _numpy_generator(key)
    return {"kernel": jnp.asarray(generator.normal(size=(input_dim, output_dim))
                                  / np.sqrt(input_dim), jnp.float32)}

  def apply(params: Params, images: jax.Array) -> jax.Array:
    return images.reshape(images.shape[0], -1) @ params["kernel"]

  return Model(init=init, apply=apply, embedding_dim=output_dim)


def mlp(*, input_shape: Sequence[int], hidden_dim: int = 8, output_dim: int = 4) -> Model:
  """A smooth two-layer encoder `tanh(flatten(x) W0 + b0) W1 + b1`; compiles far faster than a
  conv, so tests about meta-objective logic (rather than the model) use it."""
  input_dim = int(np.prod(input_shape))

  def init(key: PRNGKey) -> Params:  # numpy seeded by key (call outside jit): no compile
    generator = _numpy_generator(key)
    hidden = generator.normal(size=(input_dim, hidden_dim)) / np.sqrt(input_dim)
    output = generator.normal(size=(hidden_dim, output_dim)) / np.sqrt(hidden_dim)
    return {"layer0": {"kernel": jnp.asarray(hidden, jnp.float32),
                       "bias": jnp.zeros((hidden_dim,), jnp.float32)},
            "layer1": {"kernel": jnp.asarray(output, jnp.float32),
                       "bias": jnp.zeros((output_dim,), jnp.float32)}}

  def apply(params: Params, images: jax.Array) -> jax.Array:
    hidden = jnp.tanh(images.reshape(images.shape[0], -1) @ params["layer0"]["kernel"]
                      + params["layer0"]["bias"])
    return hidden @ params["layer1"]["kernel"] + params["layer1"]["bias"]

  return Model(init=init, apply=apply, embedding_dim=output_dim)


def _noisy_views(key: PRNGKey, sources: jax.Array, num_views: int, noise: float) -> jax.Array:
  """`num_views` noisy copies of each of `[N, ...]` sources, class-major: `[N*num_views, ...]`."""
  views = jnp.repeat(sources, num_views, axis=0)
  return views + noise * jax.random.normal(key, views.shape, views.dtype)


def _fake_arrays(key, *, num_tasks, num_ways, num_support, num_queries, image_shape, noise):
  generator = _numpy_generator(key)
  sources = generator.uniform(size=(num_tasks, num_ways, *image_shape))

  def views(num_views):
    copies = np.repeat(sources, num_views, axis=1)
    return copies + noise * generator.normal(size=copies.shape)

  def labels(num_views):
    return np.tile(np.repeat(np.arange(num_ways, dtype=np.int32), num_views), (num_tasks, 1))

  return views(num_support), labels(num_support), views(num_queries), labels(num_queries)


def fake_tasks(key: PRNGKey, *, num_tasks: int, num_ways: int = 3, num_support: int = 2,
               num_queries: int = 2, image_shape: Sequence[int] = (8, 8, 1), noise: float = 0.2,
               dtype=jnp.float32) -> Task:
  """`num_tasks` N-way tasks with a leading `[T]` axis: in each, class n's support and query
  views are noisy copies of a random image n.

  Labels are class-major (`[0]*S + [1]*S + ...`), as `jmeta.tasks` builds them. The data comes
  from numpy (seeded by `key`), so call this outside `jit`.
  """
  support, support_labels, query, query_labels = _fake_arrays(
      key, num_tasks=num_tasks, num_ways=num_ways, num_support=num_support,
      num_queries=num_queries, image_shape=image_shape, noise=noise)
  return Task(support=jnp.asarray(support, dtype), support_labels=jnp.asarray(support_labels),
              query=jnp.asarray(query, dtype), query_labels=jnp.asarray(query_labels))


def fake_task(key: PRNGKey, *, num_ways: int = 3, num_support: int = 2, num_queries: int = 2,
              image_shape: Sequence[int] = (8, 8, 1), noise: float = 0.2,
              dtype=jnp.float32) -> Task:
  """One task of `fake_tasks`, without the leading axis."""
  support, support_labels, query, query_labels = _fake_arrays(
      key, num_tasks=1, num_ways=num_ways, num_support=num_support, num_queries=num_queries,
      image_shape=image_shape, noise=noise)
  return Task(support=jnp.asarray(support[0], dtype),
              support_labels=jnp.asarray(support_labels[0]),
              query=jnp.asarray(query[0], dtype), query_labels=jnp.asarray(query_labels[0]))


def fake_images(key: PRNGKey, *, num_images: int = 16,
                image_shape: Sequence[int] = (8, 8, 1)) -> jax.Array:
  """An unlabeled pool `[M, H, W, C]` of uniform float32 images in [0, 1] (numpy, seeded by
  `key`)."""
  return jnp.asarray(_numpy_generator(key).uniform(size=(num_images, *image_shape)),
                     jnp.float32)


def task_sampler(*, num_tasks: int, num_ways: int = 3, num_support: int = 2,
                 num_queries: int = 2, noise: float = 0.2) -> Callable[[PRNGKey, jax.Array], Task]:
  """A `train.make_update` sampler: `(key, images [M, H, W, C]) -> Task` with leading `[T]`.

  Each task takes N distinct images of the pool as pseudo-classes and noisy copies as views.
  """

  def sample_one(key: PRNGKey, images: jax.Array) -> Task:
    key_images, key_support, key_query = jax.random.split(key, 3)
    sources = images[jax.random.permutation(key_images, images.shape[0])[:num_ways]]
    return Task(
        support=_noisy_views(key_support, sources, num_support, noise),
        support_labels=jnp.repeat(jnp.arange(num_ways, dtype=jnp.int32), num_support),
        query=_noisy_views(key_query, sources, num_queries, noise),
        query_labels=jnp.repeat(jnp.arange(num_ways, dtype=jnp.int32), num_queries))

  def sample(key: PRNGKey, images: jax.Array) -> Task:
    return jax.vmap(sample_one, in_axes=(0, None))(jax.random.split(key, num_tasks), images)

  return sample


def to_float64(tree: PyTree) -> PyTree:
  """Casts floating leaves to float64 (call under `jax.enable_x64(True)`)."""
  return jax.tree.map(
      lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def random_direction(key: PRNGKey, tree: PyTree) -> PyTree:
  """A random Gaussian direction shaped like `tree` (same dtypes), of unit global norm (for
  directional finite differences; numpy seeded by `key`)."""
  leaves, treedef = jax.tree.flatten(tree)
  generator = _numpy_generator(key)
  direction = [generator.normal(size=np.shape(x)) for x in leaves]
  norm = np.sqrt(sum(np.sum(d * d) for d in direction))
  return jax.tree.unflatten(treedef, [jnp.asarray(d / norm, x.dtype)
                                      for d, x in zip(direction, leaves)])


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  """Σ over leaves of ⟨a, b⟩."""
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_trees_allclose(actual: PyTree, desired: PyTree, *, rtol: float = 1e-6,
                          atol: float = 0.0) -> None:
  """Same tree structure, and every leaf allclose (names the failing leaf's path)."""
  assert jax.tree.structure(actual) == jax.tree.structure(desired), (
      f"tree structures differ: {jax.tree.structure(actual)} vs {jax.tree.structure(desired)}")
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(actual)[0],
                          jax.tree.leaves(desired)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=f"leaf {jax.tree_util.keystr(path)}")
