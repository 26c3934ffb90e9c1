"""Tests for jmeta.evaluate: deterministic episodes, prototype accuracy, confidence intervals."""
import hashlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta import evaluate
from jmeta import tasks
from jmeta.data.dataset import Dataset

NUM_CLASSES, PER_CLASS, H, W = 12, 7, 10, 9
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_dataset():
  """12 classes × 7 images of 10×9×1; pixel c (row-major) marks the class, (9, 8) the index."""
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(NUM_CLASSES), PER_CLASS))
  labels = labels.astype(np.int32)
  images = np.zeros((labels.size, H, W, 1), np.uint8)
  images[np.arange(labels.size), labels // W, labels % W, 0] = 255
  images[:, H - 1, W - 1, 0] = np.arange(labels.size) + 1
  return Dataset(images, labels, tuple(f"class{c}" for c in range(NUM_CLASSES)))


def oracle_embed(images):
  """The one-hot class read from the pixels: [B, H, W, 1] -> [B, 2*W]."""
  return images[:, :2, :, 0].reshape(images.shape[0], 2 * W)


def constant_embed(images):
  return jnp.ones((images.shape[0], 3))


def noisy_embed(images):
  """A fixed random projection of all pixels: imperfect, so accuracies vary across episodes."""
  projection = jax.random.normal(jax.random.key(42), (H * W, 4))
  return images.reshape(images.shape[0], -1) @ projection


def _episode_digest(seed, index):
  """A hash of evaluation episode `index` (its indices and images); also run in a subprocess."""
  pool = tasks.labeled_pool(make_dataset())
  key_episode, _ = evaluate.episode_keys(seed, index)
  key_indices, _ = jax.random.split(key_episode)
  indices = tasks.sample_episode_indices(key_indices, pool, num_ways=5, num_shots=1,
                                         num_queries=2)
  task = tasks.sample_episode(key_episode, pool, num_ways=5, num_shots=1, num_queries=2)
  digest = hashlib.sha256()
  for array in (*indices, *task):
    digest.update(np.asarray(array).tobytes())
  return digest.hexdigest()


def test_episodes_are_a_pure_function_of_seed_and_index_across_processes():
  in_process = _episode_digest(3, 5)
  code = ("import sys; sys.path.insert(0, sys.argv[1]); import evaluate_test; "
          "print(evaluate_test._episode_digest(3, 5))")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  fresh = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "tests")], env=env,
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=120)
  assert fresh.stdout.strip().splitlines()[-1] == in_process
  assert _episode_digest(3, 6) != in_process
  assert _episode_digest(4, 5) != in_process


def test_ci95_by_hand():
  result = evaluate.result_from_accuracies([1.0, 0.5, 0.75, 0.25], num_ways=4, num_shots=1)
  # mean 0.625; deviations ±0.375, ±0.125 -> variance (2*0.140625 + 2*0.015625)/4 = 0.078125.
  assert result.mean == pytest.approx(0.625)
  assert result.ci95 == pytest.approx(1.96 * np.sqrt(0.078125) / 2)      # = 0.27392
  assert result.num_episodes == 4 and result.accuracies.dtype == np.float64
  assert str(result) == "62.50 ± 27.39%"
  with pytest.raises(ValueError, match="empty"):
    evaluate.result_from_accuracies([], num_ways=4, num_shots=1)


def test_oracle_embedding_scores_100_percent():
  result = evaluate.few_shot(oracle_embed, make_dataset(), num_ways=5, num_shots=1,
                             num_queries=3, num_episodes=20, batch_size=8, progress=False)
  assert result.mean == 1.0 and result.ci95 == 0.0 and str(result) == "100.00 ± 0.00%"
  assert (result.num_ways, result.num_shots, result.num_episodes) == (5, 1, 20)
  np.testing.assert_array_equal(result.accuracies, np.ones(20))


def test_constant_embedding_scores_chance():
  # Every cosine ties, argmax picks class 0, which is right for exactly 1/N of the queries.
  result = evaluate.few_shot(constant_embed, make_dataset(), num_ways=4, num_shots=2,
                             num_queries=3, num_episodes=10, batch_size=4, progress=False)
  np.testing.assert_allclose(result.accuracies, 0.25)
  assert result.mean == pytest.approx(0.25) and result.ci95 == pytest.approx(0.0)


def test_traced_once_and_independent_of_batch_size():
  traces = []

  def classify_fn(key, support, support_labels, query):
    traces.append(support.shape)
    logits = evaluate.prototype_classifier(noisy_embed, num_ways=3)(key, support, support_labels,
                                                                    query)
    return logits

  data = make_dataset()
  kwargs = dict(num_ways=3, num_shots=1, num_queries=4, num_episodes=7, progress=False)
  result = evaluate.few_shot_classifier(classify_fn, data, batch_size=3, **kwargs)  # 3+3+1
  assert len(traces) == 1 and traces[0] == (3, H, W, 1)
  assert result.accuracies.shape == (7,) and len(set(result.accuracies.tolist())) > 1
  whole = evaluate.few_shot(noisy_embed, tasks.labeled_pool(data), batch_size=50, **kwargs)
  np.testing.assert_allclose(whole.accuracies, result.accuracies)
  first = evaluate.few_shot(noisy_embed, data, batch_size=2, **{**kwargs, "num_episodes": 3})
  np.testing.assert_allclose(first.accuracies, result.accuracies[:3])
  batch_fn = evaluate.make_batch_accuracy(classify_fn, num_ways=3, num_shots=1, num_queries=4,
                                         seed=0, batch_size=3)
  np.testing.assert_allclose(batch_fn(tasks.labeled_pool(data), jnp.int32(3)),
                             result.accuracies[3:6])


def test_episode_chunks_do_not_change_accuracies():
  """One episode at a time (the default), chunks of 3, and the whole batch vmapped agree."""
  kwargs = dict(num_ways=3, num_shots=1, num_queries=4, num_episodes=12, batch_size=6,
                progress=False)
  data = make_dataset()
  results = [evaluate.few_shot(noisy_embed, data, episodes_per_chunk=chunk, **kwargs)
             for chunk in (1, 3, 6)]
  assert len(set(results[0].accuracies.tolist())) > 1
  for result in results[1:]:
    np.testing.assert_array_equal(result.accuracies, results[0].accuracies)
  # A batch size that is not a multiple of the chunk is rounded up, episodes unchanged.
  rounded = evaluate.few_shot(noisy_embed, data, episodes_per_chunk=4, **kwargs)
  np.testing.assert_array_equal(rounded.accuracies, results[0].accuracies)


def test_bad_chunking_raises():
  with pytest.raises(ValueError, match="episodes_per_chunk=0"):
    evaluate.few_shot(oracle_embed, make_dataset(), num_ways=3, num_shots=1, num_queries=2,
                      num_episodes=4, episodes_per_chunk=0, progress=False)
  with pytest.raises(ValueError, match="batch_size=5 must be a multiple of"):
    evaluate.make_batch_accuracy(evaluate.prototype_classifier(oracle_embed, num_ways=3),
                                 num_ways=3, num_shots=1, num_queries=2, seed=0, batch_size=5,
                                 episodes_per_chunk=2)
  with pytest.raises(ValueError, match="at least one device"):
    evaluate.make_batch_accuracy(evaluate.prototype_classifier(oracle_embed, num_ways=3),
                                 num_ways=3, num_shots=1, num_queries=2, seed=0, batch_size=4,
                                 devices=())


def test_classifier_key_is_per_episode_and_reproducible():
  def random_classify(key, support, support_labels, query):
    del support, support_labels
    return jax.random.normal(key, (query.shape[0], 5))

  kwargs = dict(num_ways=5, num_shots=1, num_queries=6, num_episodes=12, batch_size=5,
                progress=False)
  data = make_dataset()
  result = evaluate.few_shot_classifier(random_classify, data, **kwargs)
  again = evaluate.few_shot_classifier(random_classify, data, **kwargs)
  np.testing.assert_array_equal(result.accuracies, again.accuracies)
  assert len(set(result.accuracies.tolist())) > 2
  other_seed = evaluate.few_shot_classifier(random_classify, data, seed=1, **kwargs)
  assert not np.array_equal(other_seed.accuracies, result.accuracies)


def test_prototype_classifier_is_cosine_to_normalised_mean_of_normalised_support():
  support = jnp.array([[3.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
  labels = jnp.array([0, 0, 1])
  query = jnp.array([[2.0, 0.0], [0.0, 0.0]])
  classify_fn = evaluate.prototype_classifier(lambda x: x, num_ways=2)
  logits = classify_fn(jax.random.key(0), support, labels, query)
  prototype = np.array([1 + 1 / np.sqrt(2), 1 / np.sqrt(2)])
  prototype /= np.linalg.norm(prototype)
  np.testing.assert_allclose(logits, [[prototype[0], 0.0], [0.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_ways=13, num_shots=1), "num_ways=13 exceeds the 12 classes"),
    (dict(num_ways=5, num_shots=3, num_queries=5), r"num_shots \+ num_queries"),
    (dict(num_ways=5, num_shots=0), "num_shots=0"),
    (dict(num_ways=5, num_shots=1, num_queries=2, num_episodes=0), "num_episodes=0"),
    (dict(num_ways=5, num_shots=1, num_queries=2, batch_size=0), "batch_size=0"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    evaluate.few_shot(oracle_embed, make_dataset(), progress=False, **kwargs)


def test_bad_logits_shape_and_empty_dataset_raise():
  with pytest.raises(ValueError, match="logits"):
    evaluate.few_shot_classifier(lambda key, s, sl, q: jnp.zeros((q.shape[0], 4)), make_dataset(),
                                 num_ways=5, num_shots=1, num_queries=2, num_episodes=2,
                                 progress=False)
  empty = Dataset(np.zeros((0, H, W, 1), np.uint8), np.zeros((0,), np.int32), ())
  with pytest.raises(ValueError, match="empty pool"):
    evaluate.few_shot(oracle_embed, empty, num_ways=5, num_shots=1, progress=False)


def test_few_shot_with_params_compiles_once_across_parameter_values():
  """A training loop evaluating new parameters must not recompile: params are traced."""
  images = np.zeros((40, 4, 4, 1), np.uint8)
  labels = np.arange(40, dtype=np.int32) % 8
  images[np.arange(40), 0, labels % 4, 0] = 255
  images[np.arange(40), 1, labels // 4, 0] = 255
  data = Dataset(images, labels, tuple("abcdefgh"))
  traces = []

  def embed(weights, x):
    traces.append(1)
    return x.reshape(x.shape[0], -1) * weights

  results = [evaluate.few_shot(embed, data, num_ways=3, num_shots=1, num_queries=4,
                               num_episodes=6, batch_size=3, progress=False,
                               params=jnp.float32(scale)) for scale in (1.0, 2.0, 3.0)]
  assert all(r.mean == 1.0 for r in results)
  # Support and query are embedded by two calls in one trace: 2 traces in all, not 6.
  assert len(traces) == 2
