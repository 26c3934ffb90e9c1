"""The inner loop: adapters (one descent step on a task's support set) and their unroll.

An `Adapter` is an optax-style NamedTuple of pure functions. The fast weights live in an
`InnerState`; the outer loop learns `meta_params = {"params": ..., ["step_sizes": ...]}`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jmeta import inner, models, types
  >>> model = models.conv4.make(width=8)
  >>> adapter = inner.contrastive(model.apply, step_size=0.1, temperature=0.5)
  >>> meta_params = adapter.init_meta({"encoder": model.init(jax.random.key(0))})
  >>> support = types.Batch(jnp.ones((4, 28, 28, 1)), jnp.array([0, 0, 1, 1]))
  >>> state, metrics = inner.unroll(adapter, jax.random.key(1), adapter.init(meta_params),
  ...                               support, num_steps=3)
  >>> metrics["loss"].shape
  (3,)
"""
from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from jmeta import classifiers
from jmeta import losses
from jmeta.types import Batch, MetaParams, Metrics, Params, PRNGKey, PyTree

LossFn = Callable[[Params], tuple]  # params -> (loss, metrics)
AdaptationLoss = Callable[[Params, PRNGKey, Batch], tuple]  # (params, key, batch) -> (loss, metrics)


class InnerState(NamedTuple):
  params: Params        # fast weights: every leaf, of which only the adapted subset changes
  step_sizes: PyTree    # per-leaf step sizes (Meta-SGD), shaped like params; None for a fixed α


class Adapter(NamedTuple):
  """How a task adapts the fast weights."""
  init_meta: Callable[[Params], MetaParams]   # model params -> what the outer loop learns
  init: Callable[[MetaParams], InnerState]    # meta params -> fast weights at step 0
  step: Callable[[InnerState, LossFn], tuple]  # one descent step on any loss of the fast weights
  loss: AdaptationLoss                        # the adaptation loss on a labeled support batch


def update(adapter: Adapter, key: PRNGKey, state: InnerState,
           batch: Batch) -> tuple[InnerState, Metrics]:
  """One step of `adapter`'s own adaptation loss on `batch` → (state, metrics incl. "loss")."""
  return adapter.step(state, lambda params: adapter.loss(params, key, batch))


def unroll(adapter: Adapter, key: PRNGKey, state: InnerState, batch: Batch, num_steps: int, *,
           remat: bool = False) -> tuple[InnerState, Metrics]:
  """`num_steps` adaptation steps with `lax.scan`; metrics get a leading `[num_steps]` axis.

  Args:
    adapter: the inner rule.
    key: split into one key per step.
    state: fast weights to start from.
    batch: the labeled support set.
    num_steps: L ≥ 0.
    remat: recompute each step's activations in the backward pass (`jax.checkpoint`), so the
      memory of differentiating through the unroll stays flat in L.
  """
  if num_steps < 0:
    raise ValueError(f"num_steps={num_steps} must be >= 0.")

  def body(state, step_key):
    return update(adapter, step_key, state, batch)

  if remat:
    body = jax.checkpoint(body)
  if num_steps == 0:
    return state, {}
  return jax.lax.scan(body, state, jax.random.split(key, num_steps))


def _adapted_mask(params: Params, adapt: Union[str, Sequence[str]]) -> list:
  """Per-leaf booleans: does this leaf adapt? `adapt` is "all" or path prefixes like
  "encoder/block3" or "head" (paths join dict keys with '/')."""
  paths = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  if adapt == "all":
    return [True] * len(paths)
  prefixes = (adapt,) if isinstance(adapt, str) else tuple(adapt)
  mask = [any(p == prefix or p.startswith(prefix + "/") for prefix in prefixes) for p in paths]
  unmatched = [prefix for prefix in prefixes
               if not any(p == prefix or p.startswith(prefix + "/") for p in paths)]
  if unmatched:
    raise ValueError(f"adapt={tuple(prefixes)!r}: {unmatched} match no parameter; parameter "
                     f"paths are {paths}.")
  return mask


def sgd(loss: AdaptationLoss, *, step_size: float, first_order: bool = False,
        adapt: Union[str, Sequence[str]] = "all", learn_step_sizes: bool = False,
        extra_params: Optional[Callable[[], Params]] = None) -> Adapter:
  """An adapter doing plain (or Meta-SGD) gradient descent on `loss`.

  Args:
    loss: `(params, key, batch) -> (loss, metrics)`, the adaptation loss.
    step_size: α; with `learn_step_sizes` the initial value of every learned step size.
    first_order: treat inner gradients as constants (FO-MAML): the meta-gradient then skips
      second derivatives.
    adapt: "all", or path prefixes of the leaves that adapt (e.g. ("encoder/block3", "head"),
      ANIL style); the other leaves stay at their meta values, and no gradient is computed
      for them in the inner loop.
    learn_step_sizes: Meta-SGD (Li et al. 2017): one learned step size per parameter entry,
      initialised at `step_size` and stored in `meta_params["step_sizes"]`.
    extra_params: builds task-specific fast weights added at `init` and not meta-learned,
      e.g. a zero-initialised head (the "zeroing trick").
  """
  if not step_size > 0:
    raise ValueError(f"step_size={step_size} must be > 0.")

  def init_meta(params: Params) -> MetaParams:
    meta_params = {"params": params}
    if learn_step_sizes:
      full = dict(params, **extra_params()) if extra_params else params
      meta_params["step_sizes"] = jax.tree.map(lambda p: jnp.full_like(p, step_size), full)
    return meta_params

  def init(meta_params: MetaParams) -> InnerState:
    params = meta_params["params"]
    if extra_params is not None:
      params = dict(params, **extra_params())
    return InnerState(params=params, step_sizes=meta_params.get("step_sizes"))

  def step(state: InnerState, loss_fn: LossFn) -> tuple[InnerState, Metrics]:
    leaves, treedef = jax.tree.flatten(state.params)
    mask = _adapted_mask(state.params, adapt)
    adapted = [leaf for leaf, m in zip(leaves, mask) if m]

    def merge(adapted_leaves):
      it = iter(adapted_leaves)
      return jax.tree.unflatten(treedef, [next(it) if m else leaf
                                          for leaf, m in zip(leaves, mask)])

    (value, metrics), grads = jax.value_and_grad(lambda a: loss_fn(merge(a)), has_aux=True)(adapted)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    if state.step_sizes is None:
      new = [p - step_size * g for p, g in zip(adapted, grads)]
    else:
      sizes = [s for s, m in zip(jax.tree.leaves(state.step_sizes), mask) if m]
      new = [p - s * g for p, g, s in zip(adapted, grads, sizes)]
    return state._replace(params=merge(new)), dict(metrics, loss=value)

  return Adapter(init_meta=init_meta, init=init, step=step, loss=loss)


def contrastive(apply_fn, *, step_size: float, temperature: float = 0.5, **kwargs) -> Adapter:
  """SupCon/NT-Xent on the support views: views of the same image attract (design §1.2)."""

  def loss(params, key, batch):
    del key
    embeddings = apply_fn(params["encoder"], batch.images)
    return losses.supcon(embeddings, batch.labels, temperature=temperature), {}

  return sgd(loss, step_size=step_size, **kwargs)


def prototype(apply_fn, *, step_size: float, num_ways: int, distance: str = "cosine",
              temperature: float = 1.0, **kwargs) -> Adapter:
  """Cross-entropy of the support set against its own prototypes (ProtoNet-style)."""
  classifiers.prototype(apply_fn, num_ways=num_ways, distance=distance)  # validates distance

  def loss(params, key, batch):
    del key
    embeddings = apply_fn(params["encoder"], batch.images)
    logits = losses.prototype_logits(embeddings, batch.labels, embeddings, num_ways=num_ways,
                                     distance=distance, temperature=temperature)
    return losses.cross_entropy(logits, batch.labels), {}

  return sgd(loss, step_size=step_size, **kwargs)


def head(apply_fn, *, step_size: float, num_ways: Optional[int] = None,
         embedding_dim: Optional[int] = None, **kwargs) -> Adapter:
  """Cross-entropy of a linear head on the encoder (MAML).

  With `num_ways` and `embedding_dim` given, the head is created zero-initialised for every task
  and is not meta-learned (the "zeroing trick", UMTRA-style); otherwise it is meta-learned and
  must be in the params under "head".
  """
  if (num_ways is None) != (embedding_dim is None):
    raise ValueError("head(): give both num_ways and embedding_dim for a zero-initialised "
                     "head, or neither for a meta-learned one.")
  logits_fn = classifiers.linear_head(apply_fn)
  if num_ways is not None:
    def extra_params():
      return {"head": {"kernel": jnp.zeros((embedding_dim, num_ways)),
                       "bias": jnp.zeros((num_ways,))}}
    kwargs["extra_params"] = extra_params

  def loss(params, key, batch):
    del key
    return losses.cross_entropy(logits_fn(params, batch, batch.images), batch.labels), {}

  return sgd(loss, step_size=step_size, **kwargs)


def init_head(key: PRNGKey, embedding_dim: int, num_ways: int) -> Params:
  """A meta-learned linear head with PyTorch's default init (for supervised MAML)."""
  bound = 1.0 / jnp.sqrt(embedding_dim)
  key_kernel, key_bias = jax.random.split(key)
  return {"kernel": jax.random.uniform(key_kernel, (embedding_dim, num_ways), minval=-bound,
                                       maxval=bound),
          "bias": jax.random.uniform(key_bias, (num_ways,), minval=-bound, maxval=bound)}
