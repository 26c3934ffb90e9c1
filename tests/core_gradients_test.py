"""Meta-gradients of the core engine against finite differences and closed forms.

Everything runs in float64 (`jax.enable_x64` per test) so central differences are accurate to
~1e-9, and every reference here is written by hand from the definitions in design.md §1 (plain
SGD loops over `jax.grad`), independently of `jmeta.inner`'s unroll:

* second-order meta-gradients of BMSSL (contrastive inner loop, cosine prototypes, δ > 0,
  λ in (0, 1)) and MAML (linear head) on a 2-block Conv4 with batch norm match directional
  finite differences; the other checks use a tanh MLP, which compiles ~3× faster;
* first-order meta-gradients match finite differences of *their own* definition: the same
  inner loop with every inner gradient frozen at its value along the base trajectory;
* one inner SGD step on a linear encoder matches the closed form (I − α∇²L_s)∇L_q(θ');
* the bootstrap target gets exactly zero gradient, and δ = 0 or λ = 1 reduce BMSSL to MAML.
"""
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
STEP_SIZE = 0.5          # α
INNER_TEMPERATURE = 0.5  # τ of the contrastive inner loss
TEMPERATURE = 0.1        # τ of the cosine-prototype predictions
EPS = 1e-6               # central-difference step (float64)


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


# ------------------------------------------------------------------------------------------------
# Hand-written references.


def _setup(model="mlp", *, with_head=False, seed=0):
  """A tiny model ("conv": 2-block Conv4 on 8×8 images; "mlp": a tanh MLP, cheap to compile),
  its float64 params {"encoder"[, "head"]} and a float64 3-way task."""
  if model == "conv":
    model, image_shape = testing.tiny_conv(), (8, 8, 1)
  else:
    model, image_shape = testing.mlp(input_shape=(4, 4, 1), hidden_dim=6, output_dim=5), (4, 4, 1)
  key_model, key_head, key_task = jax.random.split(jax.random.key(seed), 3)
  params = {"encoder": model.init(key_model)}
  if with_head:
    params["head"] = inner.init_head(key_head, model.embedding_dim, NUM_WAYS)
  task = testing.fake_task(key_task, num_ways=NUM_WAYS, num_support=2, num_queries=2,
                           image_shape=image_shape, dtype=jnp.float64)
  return model, testing.to_float64(params), task


def _sgd(loss_fn, params, num_steps):
  """Plain SGD by hand; also returns the inner gradients seen along the way."""
  seen = []
  for _ in range(num_steps):
    grads = jax.grad(loss_fn)(params)
    seen.append(grads)
    params = jax.tree.map(lambda p, g: p - STEP_SIZE * g, params, grads)
  return params, seen


def _frozen_sgd(params, frozen_grads):
  """The first-order inner loop: the same steps with the inner gradients held constant."""
  for grads in frozen_grads:
    params = jax.tree.map(lambda p, g: p - STEP_SIZE * g, params, grads)
  return params


def _bmssl_pieces(model, task):
  def support_loss(params):
    return losses.supcon(model.apply(params["encoder"], task.support), task.support_labels,
                         temperature=INNER_TEMPERATURE)

  def logits(params):
    return losses.prototype_logits(
        model.apply(params["encoder"], task.support), task.support_labels,
        model.apply(params["encoder"], task.query), num_ways=NUM_WAYS, distance="cosine",
        temperature=TEMPERATURE)

  def meta_loss(adapted, target, mix):
    """λ·CE(π_{θ_L}) + (1 − λ)·KL(π̃ ‖ π_{θ_L}) with the target θ̃ given."""
    query_logits = logits(adapted)
    return (mix * losses.cross_entropy(query_logits, task.query_labels)
            + (1 - mix) * losses.kl_divergence(logits(target), query_logits))

  return support_loss, logits, meta_loss


def _maml_pieces(model, task):
  def logits(params, images):
    return model.apply(params["encoder"], images) @ params["head"]["kernel"] + params["head"]["bias"]

  def support_loss(params):
    return losses.cross_entropy(logits(params, task.support), task.support_labels)

  def query_loss(params):
    return losses.cross_entropy(logits(params, task.query), task.query_labels)

  return support_loss, query_loss


def _value_and_grad(*loss_fns):
  """One jitted function returning `value_and_grad` of each of `loss_fns` (one compile)."""
  if len(loss_fns) == 1:
    return jax.jit(jax.value_and_grad(loss_fns[0]))
  return jax.jit(lambda x: [jax.value_and_grad(fn)(x) for fn in loss_fns])


def _directions(point, num_directions, mask=None):
  directions = [testing.random_direction(jax.random.key(1000 + index), point)
                for index in range(num_directions)]
  if mask is not None:
    directions = [jax.tree.map(lambda d, m: d * m, direction, mask) for direction in directions]
  return directions


def _check_against_reference(loss_fn, reference, point, *, num_directions=3, mask=None,
                             rtol=1e-6, atol=1e-9):
  """`loss_fn`'s value equals `reference`'s at `point`, and ⟨∇loss_fn, d⟩ equals the central
  difference of `reference` along random unit directions d.

  `reference(point, base)` gets the base point too, to compute constants (frozen inner gradients,
  the bootstrap target) there. Everything is one jitted computation (one compile): the
  reference is vmapped over the 2·num_directions perturbed points.
  """
  directions = _directions(point, num_directions, mask)

  @jax.jit
  def compute(point, directions):
    loss, grads = jax.value_and_grad(loss_fn)(point)
    stacked = jax.tree.map(lambda *d: jnp.stack(d), *directions)
    plus = jax.tree.map(lambda p, d: p + EPS * d, point, stacked)
    minus = jax.tree.map(lambda p, d: p - EPS * d, point, stacked)
    # One vmapped call: the perturbed points, then the base point itself.
    values = jax.vmap(lambda p: reference(p, point))(jax.tree.map(
        lambda a, b, p: jnp.concatenate([a, b, p[None]]), plus, minus, point))
    numeric = (values[:num_directions] - values[num_directions:-1]) / (2 * EPS)
    analytic = jnp.stack([testing.tree_vdot(grads, d) for d in directions])
    return loss, values[-1], analytic, numeric

  loss, expected_loss, analytic, numeric = compute(point, directions)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-10, equal_nan=False)
  np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, equal_nan=False)
  assert np.max(np.abs(numeric)) > 1e-4, "every directional derivative is ~0: vacuous check"


# ------------------------------------------------------------------------------------------------
# 1. Finite differences on tiny models.


@pytest.mark.parametrize("model,first_order", [("conv", False), ("mlp", True)],
                         ids=["second_order", "first_order"])
def test_bmssl_meta_gradient_matches_finite_differences(model, first_order):
  model, params, task = _setup(model)
  num_inner_steps, num_bootstrap_steps, mix = 2, 1, 0.4
  adapter, objective = meta.bmssl(
      model.apply, num_ways=NUM_WAYS, step_size=STEP_SIZE, num_inner_steps=num_inner_steps,
      num_bootstrap_steps=num_bootstrap_steps, mix=mix, inner_temperature=INNER_TEMPERATURE,
      temperature=TEMPERATURE, first_order=first_order)
  support_loss, _, meta_loss = _bmssl_pieces(model, task)

  def reference(mp, base):
    adapted, frozen = _sgd(support_loss, base["params"], num_inner_steps)
    target = jax.lax.stop_gradient(_sgd(support_loss, adapted, num_bootstrap_steps)[0])
    if first_order:  # the same steps, with the inner gradients of the base trajectory
      adapted = _frozen_sgd(mp["params"], jax.lax.stop_gradient(frozen))
    else:
      adapted, _ = _sgd(support_loss, mp["params"], num_inner_steps)
    return meta_loss(adapted, target, mix)

  _check_against_reference(lambda mp: objective(mp, jax.random.key(7), task)[0], reference,
                           adapter.init_meta(params))


@pytest.mark.parametrize("model,first_order,adapt", [
    ("conv", False, "all"), ("mlp", True, "all"), ("mlp", False, ("head",))],
    ids=["second_order", "first_order", "anil"])
def test_maml_meta_gradient_matches_finite_differences(model, first_order, adapt):
  model, params, task = _setup(model, with_head=True)
  num_inner_steps = 2
  adapter = inner.head(model.apply, step_size=STEP_SIZE, first_order=first_order, adapt=adapt)
  objective = meta.maml(adapter, classifiers.linear_head(model.apply),
                        num_inner_steps=num_inner_steps)
  loss_fn = lambda mp: objective(mp, jax.random.key(3), task)[0]
  support_loss, query_loss = _maml_pieces(model, task)

  def reference(mp, base):
    if adapt != "all":  # ANIL: the objective itself is the reference (second order only)
      return loss_fn(mp)
    if first_order:
      _, frozen = _sgd(support_loss, base["params"], num_inner_steps)
      return query_loss(_frozen_sgd(mp["params"], jax.lax.stop_gradient(frozen)))
    return query_loss(_sgd(support_loss, mp["params"], num_inner_steps)[0])

  _check_against_reference(loss_fn, reference, adapter.init_meta(params))


def test_first_order_maml_is_query_gradient_at_adapted_params():
  """FO-MAML's meta-gradient is ∇L_q evaluated at θ_L (all params adapt with plain SGD)."""
  model, params, task = _setup(with_head=True, seed=1)
  adapter = inner.head(model.apply, step_size=STEP_SIZE, first_order=True)
  objective = meta.maml(adapter, classifiers.linear_head(model.apply), num_inner_steps=3)
  support_loss, query_loss = _maml_pieces(model, task)

  @jax.jit
  def compute(params):
    grads = jax.grad(lambda mp: objective(mp, jax.random.key(0), task)[0])({"params": params})
    return grads["params"], jax.grad(query_loss)(_sgd(support_loss, params, 3)[0])

  grads, expected = compute(params)
  testing.assert_trees_allclose(grads, expected, rtol=1e-9, atol=1e-12)


def test_meta_sgd_step_size_gradient_matches_finite_differences():
  model, params, task = _setup(with_head=True, seed=3)
  adapter = inner.head(model.apply, step_size=STEP_SIZE, learn_step_sizes=True)
  objective = meta.maml(adapter, classifiers.linear_head(model.apply), num_inner_steps=2)
  meta_params = adapter.init_meta(params)
  assert jax.tree.structure(meta_params["step_sizes"]) == jax.tree.structure(params)
  loss_fn = lambda mp: objective(mp, jax.random.key(0), task)[0]
  # Directions in the step sizes alone: the parameters' part is checked by the MAML test.
  only_step_sizes = {"params": jax.tree.map(jnp.zeros_like, params),
                     "step_sizes": jax.tree.map(jnp.ones_like, params)}
  _check_against_reference(loss_fn, lambda mp, base: loss_fn(mp), meta_params,
                           mask=only_step_sizes)


# ------------------------------------------------------------------------------------------------
# 2. Closed forms on a linear encoder f(x) = x W, one inner SGD step.


def _softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


class _LinearProblem:
  """The data and closed-form derivatives of `loss(W) = mean loss of softmax/linear outputs`."""

  def __init__(self, inner_loss, seed=0):
    self.model = testing.linear(input_shape=(3, 2, 1), output_dim=NUM_WAYS)
    key_model, key_task = jax.random.split(jax.random.key(seed))
    self.kernel = np.asarray(self.model.init(key_model)["kernel"], np.float64)
    self.task = testing.fake_task(key_task, num_ways=NUM_WAYS, num_support=2, num_queries=3,
                                  image_shape=(3, 2, 1), noise=0.5, dtype=jnp.float64)
    flat = lambda x: np.asarray(x, np.float64).reshape(x.shape[0], -1)
    self.xs, self.xq = flat(self.task.support), flat(self.task.query)
    self.ys = np.eye(NUM_WAYS)[np.asarray(self.task.support_labels)]
    self.yq = np.eye(NUM_WAYS)[np.asarray(self.task.query_labels)]
    self.inner_loss = inner_loss

  def adaptation_loss(self, params, key, batch):
    """The jmeta-side inner loss: ½‖xW − y‖² ("squared") or CE ("ce"), mean over examples."""
    del key
    outputs = self.model.apply(params["encoder"], batch.images)
    if self.inner_loss == "squared":
      one_hot = jax.nn.one_hot(batch.labels, NUM_WAYS)
      return 0.5 * jnp.mean(jnp.sum(jnp.square(outputs - one_hot), axis=-1)), {}
    return losses.cross_entropy(outputs, batch.labels), {}

  def logits_fn(self, params, support, images):
    del support
    return self.model.apply(params["encoder"], images)

  def support_grad(self, kernel):
    outputs = self.xs @ kernel
    residual = outputs - self.ys if self.inner_loss == "squared" else _softmax(outputs) - self.ys
    return self.xs.T @ residual / len(self.xs)

  def support_hvp(self, kernel, vector):
    """∇²L_s(W) applied to a matrix V."""
    if self.inner_loss == "squared":
      return self.xs.T @ self.xs @ vector / len(self.xs)
    probs, z = _softmax(self.xs @ kernel), self.xs @ vector
    u = probs * z - probs * np.sum(probs * z, axis=-1, keepdims=True)
    return self.xs.T @ u / len(self.xs)

  def step(self, kernel):
    return kernel - STEP_SIZE * self.support_grad(kernel)


@pytest.mark.parametrize("inner_loss", ["squared", "ce"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_one_step_meta_gradient_closed_form(inner_loss, first_order):
  problem = _LinearProblem(inner_loss)
  adapter = inner.sgd(problem.adaptation_loss, step_size=STEP_SIZE, first_order=first_order)
  objective = meta.maml(adapter, problem.logits_fn, num_inner_steps=1)
  meta_params = adapter.init_meta({"encoder": {"kernel": jnp.asarray(problem.kernel)}})
  loss, grads = _value_and_grad(lambda mp: objective(mp, jax.random.key(0), problem.task)[0])(
      meta_params)

  # θ' = θ − α∇L_s(θ);  dL_q(θ')/dθ = (I − α∇²L_s(θ)) ∇L_q(θ').
  adapted = problem.step(problem.kernel)
  probs = _softmax(problem.xq @ adapted)
  expected_loss = -np.mean(np.sum(problem.yq * np.log(probs), axis=-1))
  query_grad = problem.xq.T @ (probs - problem.yq) / len(problem.xq)
  expected = query_grad if first_order else (
      query_grad - STEP_SIZE * problem.support_hvp(problem.kernel, query_grad))
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
  np.testing.assert_allclose(grads["params"]["encoder"]["kernel"], expected, rtol=1e-9,
                             atol=1e-12)


@pytest.mark.parametrize("inner_loss", ["squared", "ce"])
@pytest.mark.parametrize("matching,mix", [("kl", 0.3), ("kl", 0.0), ("l2", 0.0), ("l2", 0.6)])
def test_bootstrap_meta_gradient_closed_form(inner_loss, matching, mix):
  """L = 1, δ = 1: the target W̃ = W₁ − α∇L_s(W₁) is a constant in the meta-gradient."""
  problem = _LinearProblem(inner_loss, seed=1)
  adapter = inner.sgd(problem.adaptation_loss, step_size=STEP_SIZE)
  objective = meta.bootstrap(adapter, problem.logits_fn, num_inner_steps=1,
                             num_bootstrap_steps=1, mix=mix, matching=matching)
  meta_params = adapter.init_meta({"encoder": {"kernel": jnp.asarray(problem.kernel)}})
  loss, grads = _value_and_grad(lambda mp: objective(mp, jax.random.key(0), problem.task)[0])(
      meta_params)

  adapted = problem.step(problem.kernel)
  target = problem.step(adapted)
  probs, target_probs = _softmax(problem.xq @ adapted), _softmax(problem.xq @ target)
  cross_entropy = -np.mean(np.sum(problem.yq * np.log(probs), axis=-1))
  outer_grad = mix * problem.xq.T @ (probs - problem.yq) / len(problem.xq)
  if matching == "kl":
    match = np.mean(np.sum(target_probs * (np.log(target_probs) - np.log(probs)), axis=-1))
    outer_grad += (1 - mix) * problem.xq.T @ (probs - target_probs) / len(problem.xq)
  else:
    match = 0.5 * np.sum(np.square(target - adapted))
    outer_grad += (1 - mix) * (adapted - target)
  expected = outer_grad - STEP_SIZE * problem.support_hvp(problem.kernel, outer_grad)
  np.testing.assert_allclose(loss, mix * cross_entropy + (1 - mix) * match, rtol=1e-12)
  np.testing.assert_allclose(grads["params"]["encoder"]["kernel"], expected, rtol=1e-9,
                             atol=1e-12)


# ------------------------------------------------------------------------------------------------
# 3. The bootstrap target gets no gradient; δ = 0 or λ = 1 is plain meta-learning.


def test_gradient_equals_that_of_a_precomputed_constant_target(matching="kl"):
  model, params, task = _setup(seed=4)
  adapter, objective = meta.bmssl(model.apply, num_ways=NUM_WAYS, step_size=STEP_SIZE,
                                  num_inner_steps=1, num_bootstrap_steps=2, mix=0.3,
                                  matching=matching, inner_temperature=INNER_TEMPERATURE,
                                  temperature=TEMPERATURE)
  logits_fn = classifiers.prototype(model.apply, num_ways=NUM_WAYS, temperature=TEMPERATURE)
  meta_params = adapter.init_meta(params)
  key = jax.random.key(5)
  support = Batch(task.support, task.support_labels)
  # The target, computed outside and frozen as numpy arrays.
  @jax.jit
  def compute_target(meta_params):
    adapted, _ = inner.unroll(adapter, key, adapter.init(meta_params), support, 1)
    return inner.unroll(adapter, key, adapted, support, 2)[0].params

  target_params = jax.tree.map(np.asarray, compute_target(meta_params))

  def with_constant_target(mp):
    state, _ = inner.unroll(adapter, key, adapter.init(mp), support, 1)
    logits = logits_fn(state.params, support, task.query)
    if matching == "kl":
      match = losses.kl_divergence(logits_fn(target_params, support, task.query), logits)
    else:
      match = losses.squared_distance(target_params, state.params)
    return 0.3 * losses.cross_entropy(logits, task.query_labels) + 0.7 * match

  (loss, grads), (expected_loss, expected) = _value_and_grad(
      lambda mp: objective(mp, key, task)[0], with_constant_target)(meta_params)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
  testing.assert_trees_allclose(grads, expected, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("matching,mix", [("l2", 0.0), ("kl", 0.5)])
def test_target_path_gets_exactly_zero_gradient(matching, mix):
  """With L = 0, Meta-SGD step sizes reach the loss only through the bootstrap steps."""
  model, params, task = _setup(seed=5)
  adapter, objective = meta.bmssl(model.apply, num_ways=NUM_WAYS, step_size=STEP_SIZE,
                                  num_inner_steps=0, num_bootstrap_steps=2, mix=mix,
                                  matching=matching, learn_step_sizes=True)
  meta_params = adapter.init_meta(params)
  _, grads = _value_and_grad(lambda mp: objective(mp, jax.random.key(0), task)[0])(meta_params)
  for leaf in jax.tree.leaves(grads["step_sizes"]):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads["params"])) > 1e-6

  # The control: without the stop_gradient, the step sizes would get a gradient.
  support_loss, logits, _ = _bmssl_pieces(model, task)

  def unstopped(step_sizes):
    target = params
    for _ in range(2):
      grads = jax.grad(support_loss)(target)
      target = jax.tree.map(lambda p, s, g: p - s * g, target, step_sizes, grads)
    if matching == "l2":
      return losses.squared_distance(target, params)
    return losses.kl_divergence(logits(target), logits(params))

  _, leaked = _value_and_grad(unstopped)(meta_params["step_sizes"])
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(leaked)) > 1e-6


def test_l2_matching_gradient_is_jacobian_transpose_of_residual():
  """mix = 0, "l2": ∇M = J_Lᵀ(θ_L − θ̃), with J_L the Jacobian of the differentiable unroll."""
  model, params, task = _setup(seed=6)
  adapter, objective = meta.bmssl(model.apply, num_ways=NUM_WAYS, step_size=STEP_SIZE,
                                  num_inner_steps=2, num_bootstrap_steps=1, mix=0.0,
                                  matching="l2")
  meta_params = adapter.init_meta(params)
  support_loss, _, _ = _bmssl_pieces(model, task)

  @jax.jit
  def compute(meta_params):
    grads = jax.grad(lambda mp: objective(mp, jax.random.key(0), task)[0])(meta_params)
    adapted, unroll_vjp = jax.vjp(lambda p: _sgd(support_loss, p, 2)[0], meta_params["params"])
    target, _ = _sgd(support_loss, adapted, 1)
    return grads, unroll_vjp(jax.tree.map(lambda a, t: a - t, adapted, target))[0]

  grads, expected = compute(meta_params)
  testing.assert_trees_allclose(grads["params"], expected, rtol=1e-9, atol=1e-14)


def test_no_bootstrap_is_plain_meta_learning():
  """δ = 0, λ = 1: BMSSL's loss and gradient are MAML's with the same pieces, and the hand one."""
  model, params, task = _setup(seed=7)
  adapter, objective = meta.bmssl(model.apply, num_ways=NUM_WAYS, step_size=STEP_SIZE,
                                  num_inner_steps=2, num_bootstrap_steps=0, mix=1.0,
                                  inner_temperature=INNER_TEMPERATURE, temperature=TEMPERATURE)
  plain = meta.maml(adapter, classifiers.prototype(model.apply, num_ways=NUM_WAYS,
                                                   temperature=TEMPERATURE), num_inner_steps=2)
  meta_params = adapter.init_meta(params)
  key = jax.random.key(1)
  support_loss, logits, _ = _bmssl_pieces(model, task)
  by_hand = lambda mp: losses.cross_entropy(logits(_sgd(support_loss, mp["params"], 2)[0]),
                                            task.query_labels)
  (loss, grads), (plain_loss, plain_grads), (hand_loss, hand_grads) = _value_and_grad(
      lambda mp: objective(mp, key, task)[0], lambda mp: plain(mp, key, task)[0], by_hand)(
          meta_params)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-12)
  testing.assert_trees_allclose(grads, plain_grads, rtol=1e-12)
  np.testing.assert_allclose(loss, hand_loss, rtol=1e-10)
  testing.assert_trees_allclose(grads, hand_grads, rtol=1e-8, atol=1e-14)


def test_mix_one_ignores_the_target():
  """λ = 1: δ > 0 gives exactly the loss and gradient of δ = 0."""
  model, params, task = _setup(seed=8)
  objectives = [meta.bmssl(model.apply, num_ways=NUM_WAYS, step_size=STEP_SIZE,
                           num_inner_steps=1, num_bootstrap_steps=num_bootstrap_steps,
                           mix=1.0)[1] for num_bootstrap_steps in (0, 3)]
  results = _value_and_grad(*[lambda mp, o=o: o(mp, jax.random.key(2), task)[0]
                              for o in objectives])({"params": params})
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)
  testing.assert_trees_allclose(results[0][1], results[1][1], rtol=1e-12)


def test_bmg_query_step_target():
  """BMG: the last bootstrap step descends the query CE; its loss and gradient by hand."""
  model, params, task = _setup(with_head=True, seed=9)
  adapter = inner.head(model.apply, step_size=STEP_SIZE)
  objective = meta.bootstrap(adapter, classifiers.linear_head(model.apply), num_inner_steps=1,
                             num_bootstrap_steps=2, mix=0.0, bmg_query_step=True)
  meta_params = adapter.init_meta(params)
  support_loss, query_loss = _maml_pieces(model, task)
  logits = lambda p: model.apply(p["encoder"], task.query) @ p["head"]["kernel"] + p["head"]["bias"]

  def reference(mp):
    adapted, _ = _sgd(support_loss, mp["params"], 1)
    target, _ = _sgd(support_loss, adapted, 1)
    target, _ = _sgd(query_loss, target, 1)
    return losses.kl_divergence(jax.lax.stop_gradient(logits(target)), logits(adapted))

  (loss, grads), (expected_loss, expected) = _value_and_grad(
      lambda mp: objective(mp, jax.random.key(0), task)[0], reference)(meta_params)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-10)
  testing.assert_trees_allclose(grads, expected, rtol=1e-8, atol=1e-14)
