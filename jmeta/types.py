"""Types shared across jmeta: pytree aliases, tasks and dataset arrays.

Shapes are written in comments as `[T, N*S, H, W, C]`: T tasks, N ways, S support views (or K
shots) per class, Q query views per class, images H×W with C channels.
"""
from typing import Any, Callable, Mapping, NamedTuple

import jax

PyTree = Any
Params = PyTree          # the parameters a model's `apply` takes
MetaParams = PyTree      # what the outer loop learns (model params, optional Meta-SGD step sizes)
PRNGKey = jax.Array      # a typed key from `jax.random.key` (or a legacy uint32[2] key)
Metrics = Mapping[str, jax.Array]


class Task(NamedTuple):
  """One few-shot task; a batch of tasks is the same type with a leading `[T]` axis."""
  support: jax.Array         # [N*S, H, W, C] float32 in [0, 1]
  support_labels: jax.Array  # [N*S] int32 in 0..N-1 (unsupervised: index of the source image)
  query: jax.Array           # [N*Q, H, W, C] float32 in [0, 1]
  query_labels: jax.Array    # [N*Q] int32 in 0..N-1


class Batch(NamedTuple):
  """Labeled images, the input of one inner-loop step."""
  images: jax.Array  # [B, H, W, C]
  labels: jax.Array  # [B] int32


class Model(NamedTuple):
  """A model as a pair of pure functions (optax style)."""
  init: Callable[[PRNGKey], Params]                # key -> params
  apply: Callable[[Params, jax.Array], jax.Array]  # (params, images [B, H, W, C]) -> [B, D]
  embedding_dim: int                               # D
