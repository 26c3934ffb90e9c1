"""The inner loop: every adapter's contract, the unroll, partial adaptation, remat, Meta-SGD."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta import classifiers
from jmeta import inner
from jmeta import losses
from jmeta import meta
from jmeta import testing
from jmeta.types import Batch

NUM_WAYS = 3
IMAGE_SHAPE = (4, 4, 1)


def _mlp():
  return testing.mlp(input_shape=IMAGE_SHAPE, hidden_dim=6, output_dim=5)


def _task(seed=0, image_shape=IMAGE_SHAPE):
  return testing.fake_task(jax.random.key(seed), num_ways=NUM_WAYS, num_support=2, num_queries=2,
                           image_shape=image_shape)


def _support(task):
  return Batch(task.support, task.support_labels)


def _params(model, *, with_head=False, seed=0):
  key_model, key_head = jax.random.split(jax.random.key(seed))
  params = {"encoder": model.init(key_model)}
  if with_head:
    params["head"] = inner.init_head(key_head, model.embedding_dim, NUM_WAYS)
  return params


def _max_abs_difference(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                           jax.tree.leaves(b)))


# Every adapter factory, with the options that change its step. (name, factory, needs a head)
ADAPTERS = {
    "contrastive": (lambda m: inner.contrastive(m.apply, step_size=0.1, temperature=0.5), False),
    "contrastive_first_order": (
        lambda m: inner.contrastive(m.apply, step_size=0.1, first_order=True), False),
    "contrastive_meta_sgd": (
        lambda m: inner.contrastive(m.apply, step_size=0.1, learn_step_sizes=True), False),
    "contrastive_last_layer": (
        lambda m: inner.contrastive(m.apply, step_size=0.1, adapt=("encoder/layer1",)), False),
    "prototype_cosine": (
        lambda m: inner.prototype(m.apply, step_size=0.1, num_ways=NUM_WAYS, temperature=0.5),
        False),
    "prototype_euclidean": (
        lambda m: inner.prototype(m.apply, step_size=0.1, num_ways=NUM_WAYS,
                                  distance="euclidean"), False),
    "head": (lambda m: inner.head(m.apply, step_size=0.1), True),
    "head_anil": (lambda m: inner.head(m.apply, step_size=0.1, adapt="head"), True),
    "head_zero_init": (
        lambda m: inner.head(m.apply, step_size=0.1, num_ways=NUM_WAYS,
                             embedding_dim=m.embedding_dim), False),
    "head_zero_init_meta_sgd": (
        lambda m: inner.head(m.apply, step_size=0.1, num_ways=NUM_WAYS,
                             embedding_dim=m.embedding_dim, learn_step_sizes=True), False),
}


# ------------------------------------------------------------------------------------------------
# Adapter contract (optax `test_scalers` style): one test body, every factory.


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_contract(name):
  factory, with_head = ADAPTERS[name]
  model = _mlp()
  adapter = factory(model)
  meta_params = adapter.init_meta(_params(model, with_head=with_head))
  state = adapter.init(meta_params)
  support = _support(_task())
  key = jax.random.key(0)

  new_state, metrics = inner.update(adapter, key, state, support)
  # Finite, same structure, shapes and dtypes.
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  for new, old in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
    assert new.shape == old.shape and new.dtype == old.dtype
    assert np.all(np.isfinite(new))
  assert metrics["loss"].shape == () and np.isfinite(metrics["loss"])
  # The step moves the fast weights and (for a small step) lowers the adaptation loss.
  assert _max_abs_difference(new_state.params, state.params) > 1e-6
  before = adapter.loss(state.params, key, support)[0]
  after = adapter.loss(new_state.params, key, support)[0]
  np.testing.assert_allclose(metrics["loss"], before, rtol=1e-6)
  assert after < before
  # jit equals eager.
  jitted_state, jitted_metrics = jax.jit(inner.update, static_argnums=0)(adapter, key, state,
                                                                          support)
  testing.assert_trees_allclose(jitted_state, new_state, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jitted_metrics["loss"], metrics["loss"], rtol=1e-5)


def test_zero_initialised_head_is_task_specific():
  model = _mlp()
  adapter = inner.head(model.apply, step_size=0.1, num_ways=NUM_WAYS,
                       embedding_dim=model.embedding_dim)
  meta_params = adapter.init_meta(_params(model))
  assert set(meta_params["params"]) == {"encoder"}  # the head is not meta-learned
  head = adapter.init(meta_params).params["head"]
  assert head["kernel"].shape == (model.embedding_dim, NUM_WAYS)
  assert head["bias"].shape == (NUM_WAYS,)
  assert not np.any(head["kernel"]) and not np.any(head["bias"])


def test_adapter_factories_validate_arguments():
  model = _mlp()
  with pytest.raises(ValueError, match="step_size"):
    inner.contrastive(model.apply, step_size=0.0)
  with pytest.raises(ValueError, match="num_ways and embedding_dim"):
    inner.head(model.apply, step_size=0.1, num_ways=NUM_WAYS)
  with pytest.raises(ValueError, match="distance"):
    inner.prototype(model.apply, step_size=0.1, num_ways=NUM_WAYS, distance="manhattan")


# ------------------------------------------------------------------------------------------------
# unroll.


def _noisy_quadratic_adapter(model, *, step_size=0.1, **kwargs):
  """An adapter whose loss uses its key, so the per-step key threading is observable."""

  def loss(params, key, batch):
    outputs = model.apply(params["encoder"], batch.images)
    noise = jax.random.normal(key, outputs.shape[-1:])
    return jnp.mean(jnp.square(outputs - noise)), {"noise": noise}

  return inner.sgd(loss, step_size=step_size, **kwargs)


def test_unroll_equals_a_python_loop_over_split_keys():
  model = _mlp()
  adapter = _noisy_quadratic_adapter(model)
  state = adapter.init(adapter.init_meta(_params(model)))
  support = _support(_task())
  key = jax.random.key(3)
  num_steps = 4

  unrolled, metrics = inner.unroll(adapter, key, state, support, num_steps)
  looped, looped_losses = state, []
  for step_key in jax.random.split(key, num_steps):
    looped, step_metrics = inner.update(adapter, step_key, looped, support)
    looped_losses.append(step_metrics["loss"])
  testing.assert_trees_allclose(unrolled, looped, rtol=1e-5, atol=1e-6)
  assert metrics["loss"].shape == (num_steps,)
  assert metrics["noise"].shape == (num_steps, model.embedding_dim)
  np.testing.assert_allclose(metrics["loss"], looped_losses, rtol=1e-5)
  # Every step drew its own noise.
  assert len({tuple(np.asarray(n).round(6)) for n in metrics["noise"]}) == num_steps


def test_unroll_of_zero_steps_is_identity_and_negative_raises():
  model = _mlp()
  adapter = inner.contrastive(model.apply, step_size=0.1)
  state = adapter.init(adapter.init_meta(_params(model)))
  support = _support(_task())
  same, metrics = inner.unroll(adapter, jax.random.key(0), state, support, 0)
  assert same is state and metrics == {}
  with pytest.raises(ValueError, match="num_steps=-1"):
    inner.unroll(adapter, jax.random.key(0), state, support, -1)


def test_first_order_unroll_has_identity_jacobian():
  """With frozen inner gradients, θ_L = θ − Σ α g_l(const), so the VJP passes cotangents through."""
  model = _mlp()
  adapter = inner.contrastive(model.apply, step_size=0.3, first_order=True)
  params = _params(model)
  support = _support(_task())

  def adapted(params):
    state = adapter.init(adapter.init_meta(params))
    return inner.unroll(adapter, jax.random.key(0), state, support, 3)[0].params

  final, vjp = jax.vjp(adapted, params)
  assert _max_abs_difference(final, params) > 1e-4
  cotangent = testing.random_direction(jax.random.key(1), params)
  testing.assert_trees_allclose(vjp(cotangent)[0], cotangent, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Partial adaptation (ANIL-style `adapt`).


def test_adapt_prefix_leaves_other_leaves_unchanged():
  model = testing.tiny_conv()
  adapter = inner.contrastive(model.apply, step_size=0.5, adapt=("encoder/block1",))
  params = _params(model)
  state = adapter.init(adapter.init_meta(params))
  adapted, _ = inner.unroll(adapter, jax.random.key(0), state, _support(_task(image_shape=(8, 8, 1))), 2)
  for path, leaf in jax.tree_util.tree_flatten_with_path(adapted.params)[0]:
    name = jax.tree_util.keystr(path)
    original = params["encoder"][path[1].key][path[2].key][path[3].key]
    if "block1" in name:
      # Conv and norm parameters of block1 descend.
      assert np.max(np.abs(leaf - original)) > 1e-6, name
    else:
      np.testing.assert_array_equal(leaf, original, err_msg=name)


@pytest.mark.parametrize("adapt", ["encoder/block9", ("encoder/block1", "head"), "encoder/block"])
def test_adapt_unknown_prefix_raises_naming_the_paths(adapt):
  model = testing.tiny_conv()
  adapter = inner.contrastive(model.apply, step_size=0.5, adapt=adapt)
  state = adapter.init(adapter.init_meta(_params(model)))
  with pytest.raises(ValueError, match="match no parameter") as error:
    inner.update(adapter, jax.random.key(0), state, _support(_task(image_shape=(8, 8, 1))))
  message = str(error.value)
  assert "encoder/block0/conv/kernel" in message  # the available paths are listed
  unmatched = "head" if isinstance(adapt, tuple) else adapt
  assert repr(unmatched) in message


# ------------------------------------------------------------------------------------------------
# Meta-SGD step sizes.


def test_meta_sgd_step_sizes():
  model = _mlp()
  params = _params(model)
  support = _support(_task())
  fixed = inner.contrastive(model.apply, step_size=0.2)
  learned = inner.contrastive(model.apply, step_size=0.2, learn_step_sizes=True)
  meta_params = learned.init_meta(params)
  assert jax.tree.structure(meta_params["step_sizes"]) == jax.tree.structure(params)
  for size in jax.tree.leaves(meta_params["step_sizes"]):
    np.testing.assert_array_equal(size, np.full(size.shape, 0.2, np.float32))

  # Initial step sizes reproduce plain SGD.
  fixed_state, _ = inner.unroll(fixed, jax.random.key(0), fixed.init(fixed.init_meta(params)),
                                support, 2)
  learned_state, _ = inner.unroll(learned, jax.random.key(0), learned.init(meta_params), support, 2)
  testing.assert_trees_allclose(learned_state.params, fixed_state.params, rtol=1e-6, atol=1e-7)

  # Per-entry sizes: a zero size freezes exactly that entry.
  sizes = meta_params["step_sizes"]
  sizes["encoder"]["layer0"]["kernel"] = sizes["encoder"]["layer0"]["kernel"].at[0, 0].set(0.0)
  state, _ = inner.unroll(learned, jax.random.key(0), learned.init(meta_params), support, 2)
  kernel = state.params["encoder"]["layer0"]["kernel"]
  assert kernel[0, 0] == params["encoder"]["layer0"]["kernel"][0, 0]
  assert kernel[0, 1] != params["encoder"]["layer0"]["kernel"][0, 1]


# ------------------------------------------------------------------------------------------------
# Rematerialisation.


def test_remat_gives_the_same_meta_gradient():
  model = _mlp()
  task = _task()
  adapter = inner.contrastive(model.apply, step_size=0.3)
  logits_fn = classifiers.prototype(model.apply, num_ways=NUM_WAYS, temperature=0.2)
  meta_params = adapter.init_meta(_params(model))

  def grads(remat):
    objective = meta.bootstrap(adapter, logits_fn, num_inner_steps=2, num_bootstrap_steps=1,
                               mix=0.5, remat=remat)
    return jax.grad(lambda mp: objective(mp, jax.random.key(0), task)[0])(meta_params)

  with_remat, without = jax.jit(lambda: (grads(True), grads(False)))()
  scale = _max_abs_difference(without, jax.tree.map(jnp.zeros_like, without))
  assert scale > 1e-4
  testing.assert_trees_allclose(with_remat, without, rtol=1e-5, atol=1e-6 * scale)
  # remat really rematerialises: the jaxpr holds a checkpoint (remat) primitive.
  objective = meta.bootstrap(adapter, logits_fn, num_inner_steps=2, remat=True)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda mp: objective(mp, jax.random.key(0), task)[0]))(
      meta_params))
  assert "remat" in jaxpr or "checkpoint" in jaxpr
