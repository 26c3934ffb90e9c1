"""Objectives' contract and the outer loop: vmap = loop, jit = eager, one trace, skipping."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta import classifiers
from jmeta import inner
from jmeta import meta
from jmeta import testing
from jmeta import train

NUM_WAYS = 3
IMAGE_SHAPE = (4, 4, 1)


def _mlp():
  return testing.mlp(input_shape=IMAGE_SHAPE, hidden_dim=6, output_dim=5)


def _tasks(num_tasks, seed=0):
  return testing.fake_tasks(jax.random.key(seed), num_tasks=num_tasks, num_ways=NUM_WAYS,
                            num_support=2, num_queries=2, image_shape=IMAGE_SHAPE)


def _index(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _bmssl(model, **kwargs):
  kwargs = dict(dict(num_ways=NUM_WAYS, step_size=0.3, num_inner_steps=2,
                     num_bootstrap_steps=1, mix=0.5), **kwargs)
  return meta.bmssl(model.apply, **kwargs)


def _make_objective(name, model):
  """(objective, meta_params) for every objective factory in jmeta.meta."""
  key_model, key_head = jax.random.split(jax.random.key(0))
  encoder = {"encoder": model.init(key_model)}
  with_head = dict(encoder, head=inner.init_head(key_head, model.embedding_dim, NUM_WAYS))
  linear_head = classifiers.linear_head(model.apply)
  if name == "bmssl":  # with Meta-SGD step sizes and rematerialised inner steps
    adapter, objective = _bmssl(model, learn_step_sizes=True, remat=True)
  elif name == "maml":
    adapter = inner.head(model.apply, step_size=0.3)
    return meta.maml(adapter, linear_head, num_inner_steps=2), adapter.init_meta(with_head)
  elif name == "bmg":
    adapter = inner.head(model.apply, step_size=0.3)
    objective = meta.bootstrap(adapter, linear_head, num_inner_steps=1, num_bootstrap_steps=2,
                               mix=0.0, bmg_query_step=True)
    return objective, adapter.init_meta(with_head)
  elif name == "umtra":
    adapter, objective = meta.umtra(model.apply, num_ways=NUM_WAYS,
                                    embedding_dim=model.embedding_dim, step_size=0.3,
                                    num_inner_steps=2)
  elif name == "protonet":
    return meta.protonet(model.apply, num_ways=NUM_WAYS), {"params": encoder}
  elif name == "simclr":
    return meta.simclr(model.apply), {"params": encoder}
  elif name == "keyed_protonet":
    # ProtoNets plus a term drawn from the task's key: cheap to compile, and any mix-up of keys
    # and tasks (chunking, sharding, fold_in) changes the result.
    protonet = meta.protonet(model.apply, num_ways=NUM_WAYS)

    def objective(meta_params, key, task):
      loss, metrics = protonet(meta_params, key, task)
      noise = jax.random.normal(key, ())
      return loss + 0.1 * noise, dict(metrics, noise=noise)

    return objective, {"params": encoder}
  else:
    raise ValueError(name)
  return objective, adapter.init_meta(encoder)


# Every factory of jmeta.meta once (first-order, l2 matching and the prototype adapter have
# their own tests in core_gradients_test.py and core_inner_test.py).
OBJECTIVES = ["bmssl", "maml", "bmg", "umtra", "protonet", "simclr"]


# ------------------------------------------------------------------------------------------------
# Objective contract: finite, non-trivial gradients; vmap over tasks equals a Python loop.


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_contract(name):
  """Finite, non-zero meta-gradients; vmap over 3 tasks equals a Python loop (losses and
  metrics here; gradients in test_map_tasks_chunking_equals_a_python_loop)."""
  objective, meta_params = _make_objective(name, _mlp())
  tasks = _tasks(3)
  keys = jax.random.split(jax.random.key(1), 3)

  @jax.jit
  def batched(meta_params):
    def mean_loss(meta_params):
      task_losses, metrics = jax.vmap(objective, in_axes=(None, 0, 0))(meta_params, keys, tasks)
      return jnp.mean(task_losses), (task_losses, metrics)
    return jax.grad(mean_loss, has_aux=True)(meta_params)

  grads, (task_losses, metrics) = batched(meta_params)
  single = jax.jit(objective)
  looped = [single(meta_params, keys[i], _index(tasks, i)) for i in range(3)]

  np.testing.assert_allclose(task_losses, [loss for loss, _ in looped], rtol=1e-5)
  for i, (_, task_metrics) in enumerate(looped):
    testing.assert_trees_allclose(_index(metrics, i), task_metrics, rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(grads) == jax.tree.structure(meta_params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 1e-5
  np.testing.assert_allclose(metrics["meta_loss"], task_losses, rtol=1e-6)


def test_objective_jit_equals_eager():
  objective, meta_params = _make_objective("maml", _mlp())
  task = _index(_tasks(1), 0)
  value_and_grad = jax.value_and_grad(objective, has_aux=True)
  (loss, metrics), grads = value_and_grad(meta_params, jax.random.key(0), task)
  (jit_loss, jit_metrics), jit_grads = jax.jit(value_and_grad)(meta_params, jax.random.key(0),
                                                               task)
  np.testing.assert_allclose(jit_loss, loss, rtol=1e-5)
  testing.assert_trees_allclose(jit_metrics, metrics, rtol=1e-5, atol=1e-6)
  testing.assert_trees_allclose(jit_grads, grads, rtol=1e-4, atol=1e-6)


def test_bootstrap_validates_arguments():
  model = _mlp()
  adapter = inner.contrastive(model.apply, step_size=0.1)
  logits_fn = classifiers.prototype(model.apply, num_ways=NUM_WAYS)
  make = functools.partial(meta.bootstrap, adapter, logits_fn)
  with pytest.raises(ValueError, match="num_inner_steps=-1"):
    make(num_inner_steps=-1)
  with pytest.raises(ValueError, match="num_bootstrap_steps=-2"):
    make(num_inner_steps=1, num_bootstrap_steps=-2)
  with pytest.raises(ValueError, match="mix=1.5"):
    make(num_inner_steps=1, mix=1.5)
  with pytest.raises(ValueError, match="matching='cosine'"):
    make(num_inner_steps=1, matching="cosine")
  with pytest.raises(ValueError, match="bmg_query_step"):
    make(num_inner_steps=1, bmg_query_step=True)
  with pytest.raises(ValueError, match="distance='manhattan'"):
    classifiers.prototype(model.apply, num_ways=NUM_WAYS, distance="manhattan")


# ------------------------------------------------------------------------------------------------
# map_tasks: vmap, lax.map over chunks, and a Python loop agree.


def test_map_tasks_chunking_equals_a_python_loop():
  objective, meta_params = _make_objective("keyed_protonet", _mlp())
  num_tasks = 4
  tasks = _tasks(num_tasks, seed=2)
  keys = jax.random.split(jax.random.key(2), num_tasks)

  def grads_of(task_chunk_size, num_shards=1):
    mapped = train.map_tasks(objective, task_chunk_size=task_chunk_size, num_shards=num_shards)
    mean_loss = lambda mp: (lambda out: (jnp.mean(out[0]), out))(mapped(mp, keys, tasks))
    return jax.grad(mean_loss, has_aux=True)(meta_params)

  # (chunk size, shards): num_shards=2 takes chunk i of both halves of the task axis per step.
  variants = [(None, 1), (1, 1), (2, 1), (1, 2)]
  results = jax.jit(lambda: [grads_of(*variant) for variant in variants])()
  single = jax.jit(jax.value_and_grad(objective, has_aux=True))
  looped = [single(meta_params, keys[i], _index(tasks, i)) for i in range(num_tasks)]
  loop_losses = np.array([l for (l, _), _ in looped])
  loop_grads = jax.tree.map(lambda *g: sum(g) / num_tasks, *[g for _, g in looped])
  for chunk, (grads, (task_losses, metrics)) in zip(variants, results):
    assert task_losses.shape == (num_tasks,), chunk
    np.testing.assert_allclose(task_losses, loop_losses, rtol=1e-5, err_msg=f"chunk {chunk}")
    np.testing.assert_allclose(metrics["noise"], [m["noise"] for (_, m), _ in looped],
                               rtol=1e-6)
    testing.assert_trees_allclose(grads, loop_grads, rtol=1e-4, atol=1e-6)


def test_chunked_meta_gradient_carries_its_sum_instead_of_stacking_chunk_gradients():
  """The chunk loop adds each chunk's gradient to its carry: no `[chunks, *param.shape]` stack
  comes out of it (stacking and reducing afterwards was measurably slower on the peer step)."""
  objective, meta_params = _make_objective("maml", _mlp())
  num_tasks = 4
  gradient_fn = train.meta_gradient(objective, num_tasks=num_tasks, task_chunk_size=1)
  jaxpr = jax.make_jaxpr(gradient_fn)(meta_params, jax.random.split(jax.random.key(0), num_tasks),
                                      _tasks(num_tasks))
  loops = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "scan"]
  assert len(loops) == 1, [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
  stacked = {tuple(var.aval.shape) for var in loops[0].outvars[loops[0].params["num_carry"]:]}
  carried = [tuple(var.aval.shape) for var in loops[0].outvars[:loops[0].params["num_carry"]]]
  param_shapes = [leaf.shape for leaf in jax.tree.leaves(meta_params)]
  assert sorted(carried) == sorted(param_shapes)
  assert not stacked & {(num_tasks,) + shape for shape in param_shapes}, stacked


def test_map_tasks_rejects_a_chunk_size_that_does_not_divide():
  objective, meta_params = _make_objective("protonet", _mlp())
  mapped = train.map_tasks(objective, task_chunk_size=3)
  with pytest.raises(ValueError, match=r"task_chunk_size=3 must divide .*num_tasks=4"):
    mapped(meta_params, jax.random.split(jax.random.key(0), 4), _tasks(4))
  mapped = train.map_tasks(objective, task_chunk_size=3, num_shards=3)  # 4 tasks per shard
  with pytest.raises(ValueError, match=r"task_chunk_size=3 must divide .*num_tasks=12 over 3"):
    mapped(meta_params, jax.random.split(jax.random.key(0), 12), _tasks(12))


# ------------------------------------------------------------------------------------------------
# make_update.


def _update_setup(*, num_tasks=4, objective_name="maml"):
  model = _mlp()
  objective, meta_params = _make_objective(objective_name, model)
  optimizer = optax.sgd(0.1)
  sample = testing.task_sampler(num_tasks=num_tasks, num_ways=NUM_WAYS)
  data = testing.fake_images(jax.random.key(5), num_images=10, image_shape=IMAGE_SHAPE)
  return objective, meta_params, optimizer, sample, data


def test_init_state():
  _, meta_params, optimizer, _, _ = _update_setup()
  state = train.init_state(meta_params, optimizer)
  assert state.step == 0 and state.step.dtype == jnp.int32
  assert state.num_skipped == 0
  testing.assert_trees_allclose(state.meta_params, meta_params)


def test_update_equals_a_hand_written_step_and_traces_once():
  objective, meta_params, optimizer, sample, data = _update_setup(
      objective_name="keyed_protonet")
  traced = []

  def counting_sample(key, data):
    traced.append(1)
    return sample(key, data)

  update = train.make_update(chex.assert_max_traces(objective, n=1), optimizer,
                             sample_tasks=counting_sample, num_tasks=4, donate=False)
  key = jax.random.key(11)
  state = train.init_state(meta_params, optimizer)
  states = [state]
  for _ in range(3):
    state, metrics = update(state, key, data)
    states.append(state)
  assert len(traced) == 1, "the update retraced"
  assert int(state.step) == 3 and int(state.num_skipped) == 0

  # The same step written out by hand: fold_in(step), sample, split per task, vmap, mean.
  @jax.jit
  def by_hand(previous):
    key_tasks, key_objective = jax.random.split(jax.random.fold_in(key, previous.step))
    tasks = sample(key_tasks, data)
    keys = jax.random.split(key_objective, 4)
    (task_losses, _), task_grads = jax.vmap(jax.value_and_grad(objective, has_aux=True),
                                            in_axes=(None, 0, 0))(previous.meta_params, keys,
                                                                  tasks)
    grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), task_grads)
    return (jax.tree.map(lambda p, g: p - 0.1 * g, previous.meta_params, grads), task_losses,
            grads)

  expected, task_losses, grads = by_hand(states[2])
  testing.assert_trees_allclose(state.meta_params, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["meta_loss"], jnp.mean(task_losses), rtol=1e-5)
  np.testing.assert_allclose(metrics["gradient_norm"], optax.tree.norm(grads), rtol=1e-4)
  assert int(metrics["skipped"]) == 0


def test_update_with_chunks_equals_vmap_and_learns():
  objective, meta_params, _, _, _ = _update_setup()
  fixed_tasks = _tasks(4, seed=3)
  optimizer = optax.sgd(0.5)
  results = {}
  for chunk in (None, 2):
    update = train.make_update(objective, optimizer, sample_tasks=lambda key, data: data,
                               num_tasks=4, task_chunk_size=chunk)
    # A copy: the update donates the state's buffers, including these meta params.
    state = train.init_state(jax.tree.map(jnp.copy, meta_params), optimizer)
    losses = []
    for _ in range(8):
      state, metrics = update(state, jax.random.key(0), fixed_tasks)
      losses.append(float(metrics["query_loss"]))
    results[chunk] = state, losses
  testing.assert_trees_allclose(results[2][0].meta_params, results[None][0].meta_params,
                                rtol=1e-4, atol=1e-5)
  losses = results[None][1]
  assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("skip_nonfinite", [True, False])
def test_update_skips_nonfinite_steps(skip_nonfinite):
  objective, meta_params, optimizer, sample, data = _update_setup(objective_name="protonet")
  optimizer = optax.adam(1e-2)

  def poisoned(meta_params, key, task):
    loss, metrics = objective(meta_params, key, task)
    return loss * jnp.nan, metrics

  update = train.make_update(poisoned, optimizer, sample_tasks=sample, num_tasks=4,
                             skip_nonfinite=skip_nonfinite, donate=False)
  state = train.init_state(meta_params, optimizer)
  new_state, metrics = update(state, jax.random.key(0), data)
  assert int(new_state.step) == 1
  assert not bool(metrics["finite"])
  if skip_nonfinite:
    assert int(new_state.num_skipped) == 1 and int(metrics["skipped"]) == 1
    for new, old in zip(jax.tree.leaves((new_state.meta_params, new_state.opt_state)),
                        jax.tree.leaves((state.meta_params, state.opt_state))):
      np.testing.assert_array_equal(new, old)
  else:
    assert int(new_state.num_skipped) == 0
    assert all(np.all(np.isnan(p)) for p in jax.tree.leaves(new_state.meta_params))


def test_make_update_validates_arguments():
  objective, _, optimizer, sample, _ = _update_setup()
  with pytest.raises(ValueError, match="num_tasks=0"):
    train.make_update(objective, optimizer, sample_tasks=sample, num_tasks=0)
