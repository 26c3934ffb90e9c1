"""Losses of the inner and outer loops. Every loss is a mean over its examples.

Conventions: `logits` are `[B, N]`, `labels` `[B]` int32, embeddings `[B, D]`.
"""
import jax
import jax.numpy as jnp

from jmeta.types import PyTree

DISTANCES = ("cosine", "euclidean")


def l2_normalize(x: jax.Array, *, axis: int = -1, eps: float = 1e-8) -> jax.Array:
  """x / ‖x‖ with a floor on the norm, so a zero vector stays finite (and gets gradient 0)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True),
                                       eps * eps))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def supcon(embeddings: jax.Array, labels: jax.Array, *, temperature: float = 0.5) -> jax.Array:
  """Supervised contrastive loss (Khosla et al. 2020) on L2-normalised embeddings.

  Each example is an anchor; its positives are the other examples with the same label, and the
  denominator runs over every other example. With two views per label this is SimCLR's NT-Xent.
  Anchors without positives contribute nothing.

  Args:
    embeddings: `[B, D]`.
    labels: `[B]` int32 (for tasks: the pseudo-class, i.e. the source image).
    temperature: τ.

  Returns:
    The mean over anchors with at least one positive.

  References:
    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
    Chen et al., "A Simple Framework for Contrastive Learning", ICML 2020.
  """
  z = l2_normalize(embeddings)
  similarity = z @ z.T / temperature
  size = similarity.shape[0]
  not_self = ~jnp.eye(size, dtype=bool)
  # The self-similarity is the largest entry; masking it with a finite value keeps grads finite.
  similarity = jnp.where(not_self, similarity, -1e9)
  log_prob = similarity - jax.nn.logsumexp(similarity, axis=1, keepdims=True)
  positive = (labels[:, None] == labels[None, :]) & not_self
  num_positive = positive.sum(axis=1)
  per_anchor = -jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.maximum(num_positive, 1)
  has_positive = num_positive > 0
  return jnp.sum(jnp.where(has_positive, per_anchor, 0.0)) / jnp.maximum(has_positive.sum(), 1)


def nt_xent(first_views: jax.Array, second_views: jax.Array, *,
            temperature: float = 0.5) -> jax.Array:
  """SimCLR's NT-Xent on paired views `[B, D]` and `[B, D]` (row i of each is one image)."""
  batch = first_views.shape[0]
  labels = jnp.concatenate([jnp.arange(batch), jnp.arange(batch)])
  return supcon(jnp.concatenate([first_views, second_views]), labels, temperature=temperature)


def prototypes(embeddings: jax.Array, labels: jax.Array, *, num_ways: int) -> jax.Array:
  """Class means `[N, D]` of `[B, D]` embeddings with labels in 0..N-1."""
  one_hot = jax.nn.one_hot(labels, num_ways, dtype=embeddings.dtype)  # [B, N]
  counts = jnp.maximum(one_hot.sum(axis=0), 1.0)
  return (one_hot.T @ embeddings) / counts[:, None]


def prototype_logits(support: jax.Array, support_labels: jax.Array, query: jax.Array, *,
                     num_ways: int, distance: str = "cosine",
                     temperature: float = 1.0) -> jax.Array:
  """Logits of nearest-prototype classification.

  Args:
    support: `[N*K, D]` support embeddings.
    support_labels: `[N*K]` int32 in 0..N-1.
    query: `[M, D]` query embeddings.
    num_ways: N.
    distance: "cosine" — cos(query, normalised mean of normalised support) / τ (design §1.3);
      "euclidean" — −‖query − mean of support‖² / τ (ProtoNets).
    temperature: τ.

  Returns:
    `[M, N]` logits.
  """
  if distance == "cosine":
    centres = l2_normalize(prototypes(l2_normalize(support), support_labels, num_ways=num_ways))
    return l2_normalize(query) @ centres.T / temperature
  if distance == "euclidean":
    centres = prototypes(support, support_labels, num_ways=num_ways)
    squared = (jnp.sum(query ** 2, axis=1, keepdims=True) - 2 * query @ centres.T
               + jnp.sum(centres ** 2, axis=1)[None, :])
    return -squared / temperature
  raise ValueError(f"distance={distance!r} is not supported; allowed values: {DISTANCES}.")


def kl_divergence(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """Mean over rows of KL(softmax(target_logits) ‖ softmax(logits)).

  The target is used as given; the caller decides whether it is under `stop_gradient`.
  """
  target_log_probs = jax.nn.log_softmax(target_logits)
  log_probs = jax.nn.log_softmax(logits)
  return jnp.mean(jnp.sum(jnp.exp(target_log_probs) * (target_log_probs - log_probs), axis=-1))


def squared_distance(target: PyTree, params: PyTree) -> jax.Array:
  """½‖target − params‖² summed over every leaf (BMG's parameter-space matching)."""
  leaves = jax.tree.leaves(jax.tree.map(lambda t, p: jnp.sum(jnp.square(t - p)), target, params))
  return 0.5 * sum(leaves)
