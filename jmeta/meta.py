"""Meta-objectives: `objective(meta_params, key, task) -> (loss, metrics)` for ONE task.

`train.make_update` vmaps an objective over a batch of tasks and differentiates it with
respect to `meta_params`. Every algorithm here is `bootstrap` with different pieces:

| algorithm | adapter | predictions | L | δ | λ |
|---|---|---|---|---|---|
| MAML / FO-MAML | `inner.head` (meta-learned head) | `classifiers.linear_head` | L | 0 | 1 |
| UMTRA-style | `inner.head` (zero head) on views-as-classes | `linear_head` | L | 0 | 1 |
| ProtoNets | none | `classifiers.prototype` (euclidean) | 0 | 0 | 1 |
| BMSSL | `inner.contrastive` | `prototype` (cosine) | L | δ | λ |
| BMG (peer workload) | `inner.head` | `linear_head` | K | L, last on query | 0 |
"""
from typing import Callable, Optional

import jax

from jmeta import classifiers
from jmeta import inner
from jmeta import losses
from jmeta.types import Batch, MetaParams, PRNGKey, Task

Objective = Callable[[MetaParams, PRNGKey, Task], tuple]
MATCHINGS = ("kl", "l2")


def bootstrap(adapter: inner.Adapter, logits_fn: classifiers.LogitsFn, *, num_inner_steps: int,
              num_bootstrap_steps: int = 0, mix: float = 1.0, matching: str = "kl",
              bmg_query_step: bool = False, remat: bool = False,
              extra_metrics: bool = True) -> Objective:
  """The bootstrapped meta-objective of BMSSL/BMG (design §1.4–1.5).

  θ_L = L adaptation steps from the meta parameters (differentiable); the target
  θ̃ = stop_gradient(δ more steps from θ_L), the last of them on the query loss when
  `bmg_query_step`; the loss is λ·CE(query, π_{θ_L}) + (1 − λ)·match(θ̃, θ_L).

  Args:
    adapter: the inner rule (also used for the bootstrap steps).
    logits_fn: task predictions from fast weights and the support set.
    num_inner_steps: L.
    num_bootstrap_steps: δ (0: no target; with λ = 1 this is plain MAML-style meta-learning).
    mix: λ in [0, 1], the weight of the query cross-entropy.
    matching: "kl" — KL(π̃ ‖ π_{θ_L}) on the query views; "l2" — ½‖θ̃ − θ_L‖².
    bmg_query_step: make the last bootstrap step a step on the query cross-entropy (BMG).
    remat: `jax.checkpoint` every differentiable inner step.
    extra_metrics: also report the support loss after adaptation and the query accuracy before
      it (costs extra forward passes; benchmarks turn it off).

  References:
    Flennerhag et al., "Bootstrapped Meta-Learning", ICLR 2022.
    Wang et al., "Unleash Model Potential: Bootstrapped Meta Self-supervised Learning", 2023.
  """
  if num_inner_steps < 0 or num_bootstrap_steps < 0:
    raise ValueError(f"num_inner_steps={num_inner_steps} and num_bootstrap_steps="
                     f"{num_bootstrap_steps} must be >= 0.")
  if not 0.0 <= mix <= 1.0:
    raise ValueError(f"mix={mix} (λ) must be in [0, 1].")
  if matching not in MATCHINGS:
    raise ValueError(f"matching={matching!r} is not supported; allowed values: {MATCHINGS}.")
  if bmg_query_step and num_bootstrap_steps < 1:
    raise ValueError("bmg_query_step=True needs num_bootstrap_steps >= 1 (the query step is "
                     "the last bootstrap step).")
  uses_target = mix < 1.0

  def objective(meta_params, key, task):
    key_inner, key_target, key_metrics = jax.random.split(key, 3)
    support = Batch(task.support, task.support_labels)
    start = adapter.init(meta_params)
    state, inner_metrics = inner.unroll(adapter, key_inner, start, support, num_inner_steps,
                                        remat=remat)
    logits = logits_fn(state.params, support, task.query)
    query_loss = losses.cross_entropy(logits, task.query_labels)
    metrics = {"query_loss": query_loss,
               "query_accuracy_after": losses.accuracy(logits, task.query_labels)}
    loss = mix * query_loss if mix > 0 else 0.0
    if uses_target:
      target = jax.lax.stop_gradient(state)
      support_steps = num_bootstrap_steps - int(bmg_query_step)
      target, _ = inner.unroll(adapter, key_target, target, support, support_steps)
      if bmg_query_step:
        def query_ce(params):
          return losses.cross_entropy(logits_fn(params, support, task.query),
                                      task.query_labels), {}
        target, _ = adapter.step(target, query_ce)
      target = jax.lax.stop_gradient(target)
      if matching == "kl":
        target_logits = jax.lax.stop_gradient(logits_fn(target.params, support, task.query))
        match = losses.kl_divergence(target_logits, logits)
      else:
        match = losses.squared_distance(target.params, state.params)
      loss = loss + (1.0 - mix) * match
      metrics["match"] = match
    metrics["meta_loss"] = loss
    if num_inner_steps:
      metrics["support_loss_before"] = inner_metrics["loss"][0]
    if extra_metrics:
      final = jax.lax.stop_gradient(state.params)
      metrics["support_loss_after"] = adapter.loss(final, key_metrics, support)[0]
      if not num_inner_steps:
        metrics["support_loss_before"] = metrics["support_loss_after"]
      before = logits_fn(jax.lax.stop_gradient(start.params), support, task.query)
      metrics["query_accuracy_before"] = losses.accuracy(before, task.query_labels)
    return loss, metrics

  return objective


def maml(adapter: inner.Adapter, logits_fn: classifiers.LogitsFn, *, num_inner_steps: int,
         remat: bool = False, extra_metrics: bool = True) -> Objective:
  """MAML (second order) or FO-MAML (an adapter with `first_order=True`): query CE after L steps.

  References:
    Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
  """
  return bootstrap(adapter, logits_fn, num_inner_steps=num_inner_steps, remat=remat,
                   extra_metrics=extra_metrics)


def bmssl(apply_fn, *, num_ways: int, step_size: float, num_inner_steps: int,
          num_bootstrap_steps: int, mix: float, inner_temperature: float = 0.5,
          temperature: float = 0.1, matching: str = "kl", bmg_query_step: bool = False,
          first_order: bool = False, adapt="all", learn_step_sizes: bool = False,
          remat: bool = False, extra_metrics: bool = True) -> tuple:
  """BMSSL as design §1 specifies it: contrastive inner loop, cosine-prototype predictions.

  Returns:
    `(adapter, objective)`; `adapter.init_meta({"encoder": params})` gives the meta params.
  """
  adapter = inner.contrastive(apply_fn, step_size=step_size, temperature=inner_temperature,
                              first_order=first_order, adapt=adapt,
                              learn_step_sizes=learn_step_sizes)
  logits_fn = classifiers.prototype(apply_fn, num_ways=num_ways, distance="cosine",
                                    temperature=temperature)
  return adapter, bootstrap(adapter, logits_fn, num_inner_steps=num_inner_steps,
                            num_bootstrap_steps=num_bootstrap_steps, mix=mix, matching=matching,
                            bmg_query_step=bmg_query_step, remat=remat,
                            extra_metrics=extra_metrics)


def protonet(apply_fn, *, num_ways: int, distance: str = "euclidean",
             temperature: float = 1.0) -> Objective:
  """Prototypical networks: query CE against support prototypes, no inner loop.

  `meta_params` is `{"params": {"encoder": ...}}`, as for every other objective.

  References:
    Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
  """
  logits_fn = classifiers.prototype(apply_fn, num_ways=num_ways, distance=distance,
                                    temperature=temperature)

  def objective(meta_params, key, task):
    del key
    support = Batch(task.support, task.support_labels)
    logits = logits_fn(meta_params["params"], support, task.query)
    loss = losses.cross_entropy(logits, task.query_labels)
    return loss, {"meta_loss": loss, "query_loss": loss,
                  "query_accuracy_after": losses.accuracy(logits, task.query_labels)}

  return objective


def simclr(apply_fn, *, temperature: float = 0.5) -> Objective:
  """SimCLR-style contrastive pre-training on a task's views, no inner loop.

  Every support and query view of image n carries label n; the loss is SupCon (NT-Xent for two
  views) over all of them.
  """

  def objective(meta_params, key, task):
    del key
    images = jax.numpy.concatenate([task.support, task.query])
    labels = jax.numpy.concatenate([task.support_labels, task.query_labels])
    loss = losses.supcon(apply_fn(meta_params["params"]["encoder"], images), labels,
                         temperature=temperature)
    return loss, {"meta_loss": loss}

  return objective


def umtra(apply_fn, *, num_ways: int, embedding_dim: int, step_size: float,
          num_inner_steps: int, first_order: bool = False, remat: bool = False,
          extra_metrics: bool = True) -> tuple:
  """UMTRA-style unsupervised MAML: views as classes, a zero-initialised head, no bootstrap.

  References:
    Khodadadeh et al., "Unsupervised Meta-Learning for Few-Shot Image Classification", 2019.

  Returns:
    `(adapter, objective)`.
  """
  adapter = inner.head(apply_fn, step_size=step_size, num_ways=num_ways,
                       embedding_dim=embedding_dim, first_order=first_order)
  return adapter, maml(adapter, classifiers.linear_head(apply_fn),
                       num_inner_steps=num_inner_steps, remat=remat,
                       extra_metrics=extra_metrics)
