"""jmeta.losses against straightforward numpy implementations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta import losses



def _log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numpy_supcon(embeddings, labels, temperature):
  """Khosla et al. eq. 2 (L_out), one anchor at a time; anchors without positives skipped."""
  z = _normalize(np.asarray(embeddings, np.float64))
  total, anchors = 0.0, 0
  for i in range(len(z)):
    others = [a for a in range(len(z)) if a != i]
    positives = [p for p in others if labels[p] == labels[i]]
    if not positives:
      continue
    log_denominator = np.log(sum(np.exp(z[i] @ z[a] / temperature) for a in others))
    total += -np.mean([z[i] @ z[p] / temperature - log_denominator for p in positives])
    anchors += 1
  return total / max(anchors, 1)


@pytest.mark.parametrize("labels,temperature", [
    ([0, 0, 1, 1, 2, 2], 0.5),           # two views per image: NT-Xent
    ([0, 0, 0, 1, 1, 2, 2, 2], 0.1),     # three views, uneven classes
    ([0, 1, 1, 2, 3, 3, 3], 1.0),        # anchors 0 and 3 have no positive
])
def test_supcon_matches_numpy(labels, temperature):
  data = np.random.default_rng(0)  # numpy test data
  embeddings = data.normal(size=(len(labels), 5)).astype(np.float32)
  labels = np.asarray(labels, np.int32)
  np.testing.assert_allclose(losses.supcon(embeddings, labels, temperature=temperature),
                             _numpy_supcon(embeddings, labels, temperature), rtol=1e-5)


def test_supcon_is_scale_invariant_and_finite_on_degenerate_inputs():
  data = np.random.default_rng(1)  # numpy test data
  embeddings = data.normal(size=(4, 3)).astype(np.float32)
  labels = jnp.array([0, 0, 1, 1])
  np.testing.assert_allclose(losses.supcon(embeddings * 7.0, labels),
                             losses.supcon(embeddings, labels), rtol=1e-5)
  # Identical embeddings and an all-zero one: finite loss and gradients.
  degenerate = jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
  value, grads = jax.value_and_grad(losses.supcon)(degenerate, labels)
  assert np.isfinite(value) and np.all(np.isfinite(grads))
  # No positives anywhere: zero loss, not NaN.
  assert losses.supcon(embeddings, jnp.arange(4)) == 0.0


def test_nt_xent_is_simclr():
  data = np.random.default_rng(2)  # numpy test data
  first, second = data.normal(size=(2, 4, 6)).astype(np.float32)
  temperature = 0.3
  z = _normalize(np.concatenate([first, second]).astype(np.float64))
  similarity = z @ z.T / temperature
  np.fill_diagonal(similarity, -np.inf)
  log_prob = _log_softmax(similarity)
  expected = -np.mean([log_prob[i, (i + 4) % 8] for i in range(8)])  # positive: the other view
  np.testing.assert_allclose(losses.nt_xent(first, second, temperature=temperature), expected,
                             rtol=1e-5)


def test_cross_entropy_and_accuracy():
  data = np.random.default_rng(3)  # numpy test data
  logits = data.normal(size=(5, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 1, 0], np.int32)
  expected = -np.mean(_log_softmax(logits.astype(np.float64))[np.arange(5), labels])
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)
  np.testing.assert_allclose(losses.accuracy(logits, labels),
                             np.mean(logits.argmax(axis=-1) == labels))


def test_prototypes_are_class_means():
  data = np.random.default_rng(4)  # numpy test data
  embeddings = data.normal(size=(6, 4)).astype(np.float32)
  labels = np.array([2, 0, 0, 2, 1, 2], np.int32)
  expected = np.stack([embeddings[labels == n].mean(axis=0) for n in range(3)])
  np.testing.assert_allclose(losses.prototypes(embeddings, labels, num_ways=3), expected,
                             rtol=1e-6)


@pytest.mark.parametrize("distance", losses.DISTANCES)
@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_prototype_logits_match_numpy(distance, temperature):
  data = np.random.default_rng(5)  # numpy test data
  support = data.normal(size=(6, 5))
  labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
  query = data.normal(size=(4, 5))
  if distance == "cosine":
    # cos(query, normalised mean of normalised support) / τ (design §1.3)
    centres = _normalize(np.stack([_normalize(support)[labels == n].mean(axis=0)
                                   for n in range(3)]))
    expected = _normalize(query) @ centres.T / temperature
  else:
    centres = np.stack([support[labels == n].mean(axis=0) for n in range(3)])
    expected = -((query[:, None, :] - centres[None]) ** 2).sum(axis=-1) / temperature
  logits = losses.prototype_logits(support.astype(np.float32), labels, query.astype(np.float32),
                                   num_ways=3, distance=distance, temperature=temperature)
  assert logits.shape == (4, 3)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_prototype_logits_reject_unknown_distance():
  with pytest.raises(ValueError, match="distance='dot'"):
    losses.prototype_logits(jnp.ones((2, 3)), jnp.array([0, 1]), jnp.ones((1, 3)), num_ways=2,
                            distance="dot")


def test_kl_divergence():
  data = np.random.default_rng(6)  # numpy test data
  target, logits = data.normal(size=(2, 6, 4)).astype(np.float32)
  p = np.exp(_log_softmax(target.astype(np.float64)))
  expected = np.mean(np.sum(p * (np.log(p) - _log_softmax(logits.astype(np.float64))), axis=-1))
  value = losses.kl_divergence(target, logits)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert value > 0
  # Zero at equality, also for logits that differ by a constant per row (same distribution).
  np.testing.assert_allclose(losses.kl_divergence(target, target), 0.0, atol=1e-7)
  np.testing.assert_allclose(losses.kl_divergence(target, target + 3.0), 0.0, atol=1e-6)
  # Non-negative for many random pairs, and asymmetric in general.
  pairs = data.normal(size=(50, 2, 3, 5)).astype(np.float32) * 3
  values = jax.vmap(losses.kl_divergence)(pairs[:, 0], pairs[:, 1])
  assert np.all(values >= -1e-6)
  assert not np.isclose(losses.kl_divergence(target, logits), losses.kl_divergence(logits, target))
  # The gradient w.r.t. the logits vanishes at equality.
  np.testing.assert_allclose(jax.grad(losses.kl_divergence, argnums=1)(target, target), 0.0,
                             atol=1e-7)


def test_squared_distance():
  data = np.random.default_rng(7)  # numpy test data
  target = {"a": data.normal(size=(3, 2)), "b": [data.normal(size=4), data.normal(size=())]}
  params = jax.tree.map(lambda x: x + data.normal(size=np.shape(x)), target)
  expected = 0.5 * sum(np.sum((t - p) ** 2) for t, p in zip(jax.tree.leaves(target),
                                                           jax.tree.leaves(params)))
  np.testing.assert_allclose(losses.squared_distance(target, params), expected, rtol=1e-5)
  assert losses.squared_distance(target, target) == 0.0
  # ∇_params ½‖t − p‖² = p − t
  grads = jax.grad(losses.squared_distance, argnums=1)(target, params)
  for g, t, p in zip(jax.tree.leaves(grads), jax.tree.leaves(target), jax.tree.leaves(params)):
    np.testing.assert_allclose(g, p - t, rtol=1e-5, atol=1e-6)


def test_l2_normalize():
  data = np.random.default_rng(8)  # numpy test data
  x = data.normal(size=(3, 4)).astype(np.float32)
  np.testing.assert_allclose(losses.l2_normalize(x), _normalize(x), rtol=1e-6)
  zero = jnp.zeros((1, 4))
  assert np.all(losses.l2_normalize(zero) == 0)
  assert np.all(np.isfinite(jax.grad(lambda v: losses.l2_normalize(v).sum())(zero)))
