"""jmeta as a plugin of the peer harness (../shared/peers/bench_peers.py --plugin THIS_FILE).

`Runner(variant)` runs the harness's fixed MAML/BMG workload (`workload.py`: Conv4, 5-way 1-shot,
15 queries, 5 inner SGD steps at 0.4, meta-batch 16, Adam 1e-3) with jmeta's own pieces:
`inner.head` + `classifiers.linear_head` + `meta.bootstrap` + `train.make_update`.
Variants: "so" (second order), "fo" (first order), "bmgL" (L bootstrap steps, the last on the
query loss, KL matching, λ = 0).
"""
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402

import workload as W  # noqa: E402  (the harness puts peers/ on sys.path)


def params_from_workload(canonical: dict) -> dict:
  """The harness's PyTorch-layout parameters as jmeta params {"encoder", "head"}."""
  import jax.numpy as jnp
  encoder = {}
  for index in range(W.N_BLOCKS):
    encoder[f"block{index}"] = {
        "conv": {"kernel": jnp.asarray(canonical[f"conv{index}.weight"].transpose(2, 3, 1, 0)),
                 "bias": jnp.asarray(canonical[f"conv{index}.bias"])},
        "norm": {"scale": jnp.asarray(canonical[f"bn{index}.weight"]),
                 "offset": jnp.asarray(canonical[f"bn{index}.bias"])},
    }
  head = {"kernel": jnp.asarray(canonical["head.weight"].T),
          "bias": jnp.asarray(canonical["head.bias"])}
  return {"encoder": encoder, "head": head}


def params_to_workload(params: dict) -> dict:
  """jmeta params back to the harness's canonical names and PyTorch layout."""
  out = {}
  for index in range(W.N_BLOCKS):
    block = params["encoder"][f"block{index}"]
    out[f"conv{index}.weight"] = np.asarray(block["conv"]["kernel"]).transpose(3, 2, 0, 1)
    out[f"conv{index}.bias"] = np.asarray(block["conv"]["bias"])
    out[f"bn{index}.weight"] = np.asarray(block["norm"]["scale"])
    out[f"bn{index}.bias"] = np.asarray(block["norm"]["offset"])
  out["head.weight"] = np.asarray(params["head"]["kernel"]).T
  out["head.bias"] = np.asarray(params["head"]["bias"])
  return out


def build_objective(variant: str, apply_fn, *, remat: bool = False):
  from jmeta import classifiers, inner, meta
  adapter = inner.head(apply_fn, step_size=W.INNER_LR, first_order=variant == "fo")
  logits_fn = classifiers.linear_head(apply_fn)
  bmg_steps = W.bmg_L(variant)
  objective = meta.bootstrap(adapter, logits_fn, num_inner_steps=W.INNER_STEPS,
                             num_bootstrap_steps=bmg_steps, mix=0.0 if bmg_steps else 1.0,
                             bmg_query_step=bool(bmg_steps), remat=remat, extra_metrics=False)
  return adapter, objective


class Runner:
  """One jitted jmeta outer step on the harness workload."""

  def __init__(self, variant: str, *, task_chunk_size=None, conv_impl: str = "matmul",
               remat: bool = False):
    import jax
    import optax
    from jmeta import models, train, types
    self._jax = jax
    model = models.conv4.make(image_size=W.IMG_H, channels=W.IMG_C, width=W.HIDDEN,
                              num_blocks=W.N_BLOCKS, norm="batch", conv_impl=conv_impl)
    adapter, self.objective = build_objective(variant, model.apply, remat=remat)
    optimizer = optax.adam(W.OUTER_LR, b1=W.ADAM_B1, b2=W.ADAM_B2, eps=W.ADAM_EPS)
    self.state = train.init_state(adapter.init_meta(params_from_workload(W.init_params())),
                                  optimizer)
    self.batches = [
        types.Task(support=jax.device_put(W.to_nhwc(b["xs"])),
                   support_labels=jax.device_put(b["ys"].astype(np.int32)),
                   query=jax.device_put(W.to_nhwc(b["xq"])),
                   query_labels=jax.device_put(b["yq"].astype(np.int32)))
        for b in W.make_batches()]
    self._update = train.make_update(self.objective, optimizer,
                                     sample_tasks=lambda key, data: data,
                                     num_tasks=W.META_BATCH, task_chunk_size=task_chunk_size)
    self._key = jax.random.key(0)
    self._mapped = train.map_tasks(self.objective, task_chunk_size=task_chunk_size)

  def step(self, i: int) -> float:
    self.state, metrics = self._update(self.state, self._key, self.batches[i % len(self.batches)])
    self._jax.block_until_ready(self.state)
    return float(metrics["meta_loss"])

  def lowered_step(self):
    return self._update.lower(self.state, self._key, self.batches[0])

  def loss_and_grad(self, i: int):
    jax = self._jax
    batch = self.batches[i % len(self.batches)]
    keys = jax.random.split(self._key, W.META_BATCH)

    def mean_loss(meta_params):
      return self._mapped(meta_params, keys, batch)[0].mean()

    loss, grads = jax.jit(jax.value_and_grad(mean_loss))(self.state.meta_params)
    return float(loss), params_to_workload(jax.device_get(grads["params"]))


def _versions():
  import jax
  import jmeta
  return {"jmeta": jmeta.__version__, "jax": jax.__version__}


IMPLS = {"jmeta": {"framework": "jax", "build": Runner, "versions": _versions}}
