"""Task predictions: logits for query images given fast weights and a labeled support set.

A classifier is `logits_fn(params, support, images) -> [M, N]` where `params` holds the
encoder under "encoder" (and a linear head under "head" when it has one) and `support` is a
`Batch` of labeled support images. Adapters, objectives and evaluation share these.
"""
from typing import Callable

import jax

from jmeta import losses
from jmeta.types import Batch, Params

Apply = Callable[[Params, jax.Array], jax.Array]
LogitsFn = Callable[[Params, Batch, jax.Array], jax.Array]


def linear_head(apply_fn: Apply) -> LogitsFn:
  """`head(f(x))`: a linear head on the encoder's features; the support set is not used."""

  def logits_fn(params: Params, support: Batch, images: jax.Array) -> jax.Array:
    del support  # the head already encodes the classes
    features = apply_fn(params["encoder"], images)
    return features @ params["head"]["kernel"] + params["head"]["bias"]

  return logits_fn


def prototype(apply_fn: Apply, *, num_ways: int, distance: str = "cosine",
              temperature: float = 1.0) -> LogitsFn:
  """Nearest-prototype logits (design §1.3): prototypes from the support embeddings of `params`.

  Support and query are embedded in separate calls, so with transductive batch norm each set
  is normalised by its own statistics (as in MAML's query evaluation).
  """
  if distance not in losses.DISTANCES:
    raise ValueError(f"distance={distance!r} is not supported; allowed values: "
                     f"{losses.DISTANCES}.")

  def logits_fn(params: Params, support: Batch, images: jax.Array) -> jax.Array:
    support_embeddings = apply_fn(params["encoder"], support.images)
    return losses.prototype_logits(support_embeddings, support.labels,
                                   apply_fn(params["encoder"], images), num_ways=num_ways,
                                   distance=distance, temperature=temperature)

  return logits_fn
