"""jmeta as a plugin of the peer harness (../shared/peers/bench_peers.py --plugin THIS_FILE).

`Runner(variant)` runs the harness's fixed MAML/BMG workload (`workload.py`: Conv4, 5-way 1-shot,
15 queries, 5 inner SGD steps at 0.4, meta-batch 16, Adam 1e-3) with jmeta's own pieces:
`inner.head` + `classifiers.linear_head` + `meta.bootstrap`, stepped by `train.make_update`. Variants: "so" (second order), "fo" (first order), "bmgL"
(L bootstrap steps, the last on the query loss, KL matching, λ = 0).

The default configuration is the fastest measured on the harness machine (2 cores; see
docs/PERFORMANCE.md):
  * conv_impl="native" (canonical XLA convolutions, jmeta/models/layers.py);
  * one JAX CPU device per core (`jax_num_cpu_devices`), the 16 tasks split over them
    (`train.make_update(mesh=...)`: `shard_map`), each device looping over its tasks one at a
    time and taking each task's meta-gradient inside the loop (`task_chunk_size=1`);
  * glibc malloc told to keep freed memory (`tune_malloc`): XLA:CPU allocates its temporaries
    per call, and returning them to the OS made every step pay page faults again;
  * no convolution biases (batch norm cancels them; `params_from_workload`);
  * XLA:CPU's older loop-fusion emitter (`experiments/xla_cpu.py`, added to XLA_FLAGS before
    JAX starts, as the launchers do).
`Runner(variant, devices=1, conv_impl="matmul", task_chunk_size=None, tune_allocator=False,
conv_bias=True, xla_fast_flags=False)` is the library's first path (im2col convolutions, all
tasks vmapped at once, one device).
"""
import ctypes
import ctypes.util
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402

import workload as W  # noqa: E402  (the harness puts peers/ on sys.path)

_MALLOC_TUNED = []


def tune_malloc() -> bool:
  """Makes glibc malloc keep freed memory instead of returning it to the OS (and faulting it in
  again, zero-filled, on the next step): one arena, no mmap'd chunks, no trimming.

  XLA:CPU allocates an executable's temporaries on every call; the peer step's are GBs, so
  without this each step spends ~30% of its CPU time in page faults (measured, see
  docs/PERFORMANCE.md). Process-wide, idempotent; call it before JAX allocates anything. Same
  effect as starting Python with MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
  MALLOC_TRIM_THRESHOLD_=18446744073709551615.
  """
  if _MALLOC_TUNED:
    return _MALLOC_TUNED[0]
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_top_pad, m_mmap_max, m_arena_max = -1, -2, -4, -8
    ok = all([libc.mallopt(m_arena_max, 1), libc.mallopt(m_mmap_max, 0),
              libc.mallopt(m_trim_threshold, -1), libc.mallopt(m_top_pad, 256 << 20)])
  except (OSError, AttributeError):
    ok = False
  _MALLOC_TUNED.append(ok)
  return ok


def set_cpu_devices(num: int) -> int:
  """Asks JAX for `num` CPU devices (only possible before its backend starts); returns how many
  CPU devices there are."""
  import jax
  try:
    jax.config.update("jax_num_cpu_devices", num)
  except RuntimeError:  # the backend already started: keep what there is
    pass
  return len(jax.devices("cpu"))


def params_from_workload(canonical: dict, conv_bias: bool = True) -> dict:
  """The harness's PyTorch-layout parameters as jmeta params {"encoder", "head"}.

  `conv_bias=False` leaves the convolutions' biases out: each feeds batch norm, which subtracts
  it again, so the network computes the same function up to rounding and the biases' true
  gradient is zero (jmeta's Conv4 default under batch norm; `models/conv4.py`).
  """
  import jax.numpy as jnp
  encoder = {}
  for index in range(W.N_BLOCKS):
    conv = {"kernel": jnp.asarray(canonical[f"conv{index}.weight"].transpose(2, 3, 1, 0))}
    if conv_bias:
      conv["bias"] = jnp.asarray(canonical[f"conv{index}.bias"])
    encoder[f"block{index}"] = {
        "conv": conv,
        "norm": {"scale": jnp.asarray(canonical[f"bn{index}.weight"]),
                 "offset": jnp.asarray(canonical[f"bn{index}.bias"])},
    }
  head = {"kernel": jnp.asarray(canonical["head.weight"].T),
          "bias": jnp.asarray(canonical["head.bias"])}
  return {"encoder": encoder, "head": head}


def params_to_workload(params: dict) -> dict:
  """jmeta params back to the harness's canonical names and PyTorch layout (zeros for left-out
  convolution biases: their gradient, the only use, is zero)."""
  out = {}
  for index in range(W.N_BLOCKS):
    block = params["encoder"][f"block{index}"]
    out[f"conv{index}.weight"] = np.asarray(block["conv"]["kernel"]).transpose(3, 2, 0, 1)
    out[f"conv{index}.bias"] = np.asarray(
        block["conv"].get("bias", np.zeros(block["conv"]["kernel"].shape[-1], np.float32)))
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
  """One jitted jmeta outer step on the harness workload.

  Args:
    variant: "so", "fo" or "bmg1".."bmg5".
    conv_impl: see jmeta/models/layers.py.
    task_chunk_size: tasks per device vmapped at once (None: all of them).
    devices: CPU devices to split the tasks over ("auto": one per core, at most 16 and dividing
      16; only takes effect before JAX's backend starts, else the devices there are).
    remat: `jax.checkpoint` every inner step.
    tune_allocator: `tune_malloc()` first.
    conv_bias: keep the harness's convolution biases (False: left out, as jmeta's Conv4 does
      under batch norm; the same function up to rounding, see `params_from_workload`).
    xla_fast_flags: `experiments.xla_cpu.add_fast_flags()` first (only takes effect before
      JAX's backend starts).
  """

  def __init__(self, variant: str, *, conv_impl: str = "native", task_chunk_size=1,
               devices="auto", remat: bool = False, tune_allocator: bool = True,
               conv_bias: bool = False, xla_fast_flags: bool = True):
    if xla_fast_flags:
      from experiments import xla_cpu
      xla_cpu.add_fast_flags()
    if tune_allocator:
      tune_malloc()
    if devices == "auto":
      cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
      devices = max(d for d in range(1, min(cores or 1, W.META_BATCH) + 1) if W.META_BATCH % d == 0)
    available = set_cpu_devices(devices) if devices > 1 else None
    import jax
    import optax
    from jmeta import models, parallel, train, types
    self._jax = jax
    devices = min(devices, available) if available else 1
    self.devices = devices
    self.mesh = parallel.make_mesh(devices) if devices > 1 else None
    model = models.conv4.make(image_size=W.IMG_H, channels=W.IMG_C, width=W.HIDDEN,
                              num_blocks=W.N_BLOCKS, norm="batch", conv_impl=conv_impl)
    adapter, self.objective = build_objective(variant, model.apply, remat=remat)
    optimizer = optax.adam(W.OUTER_LR, b1=W.ADAM_B1, b2=W.ADAM_B2, eps=W.ADAM_EPS)
    state = train.init_state(adapter.init_meta(params_from_workload(W.init_params(), conv_bias)),
                            optimizer)
    batches = [types.Task(support=W.to_nhwc(b["xs"]), support_labels=b["ys"].astype(np.int32),
                          query=W.to_nhwc(b["xq"]), query_labels=b["yq"].astype(np.int32))
               for b in W.make_batches()]
    if self.mesh is not None:
      self.state = parallel.replicate(state, self.mesh)
      self.batches = [parallel.place(b, parallel.task_sharding(self.mesh)) for b in batches]
    else:
      self.state = jax.device_put(state)
      self.batches = [jax.device_put(b) for b in batches]
    self._update = train.make_update(self.objective, optimizer,
                                     sample_tasks=lambda key, data: data,
                                     num_tasks=W.META_BATCH, task_chunk_size=task_chunk_size,
                                     mesh=self.mesh)
    self._key = jax.random.key(0)
    # `check` uses the very meta-gradient the timed step uses.
    self._meta_gradient = jax.jit(train.meta_gradient(
        self.objective, num_tasks=W.META_BATCH, task_chunk_size=task_chunk_size, mesh=self.mesh))

  def step(self, i: int) -> float:
    self.state, metrics = self._update(self.state, self._key, self.batches[i % len(self.batches)])
    self._jax.block_until_ready(self.state)
    return float(metrics["meta_loss"])

  def lowered_step(self):
    return self._update.lower(self.state, self._key, self.batches[0])

  def compile_step(self, compiler_options: dict) -> None:
    """Steps from now on run the step compiled with these XLA debug options (e.g.
    {"xla_cpu_use_fusion_emitters": True}): per-Runner, unlike XLA_FLAGS."""
    self._update = self.lowered_step().compile(compiler_options=compiler_options)

  def loss_and_grad(self, i: int):
    """Meta-loss and meta-gradient at the current parameters, for the harness's `check`."""
    (loss, _), grads = self._meta_gradient(self.state.meta_params,
                                           self._jax.random.split(self._key, W.META_BATCH),
                                           self.batches[i % len(self.batches)])
    return float(loss), params_to_workload(self._jax.device_get(grads["params"]))


def _versions():
  import jax
  import jmeta
  return {"jmeta": jmeta.__version__, "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "cpu_devices": len(jax.devices("cpu")), "malloc_tuned": bool(_MALLOC_TUNED
                                                                       and _MALLOC_TUNED[0])}


def _variant_runner(**options):
  return lambda variant: Runner(variant, **options)


IMPLS = {
    "jmeta": {"framework": "jax", "build": Runner, "versions": _versions},
    # the library's plain path as first committed (im2col convs, one device, grad of lax.map)
    "jmeta_plain": {"framework": "jax",
                    "build": _variant_runner(conv_impl="matmul", task_chunk_size=None, devices=1,
                                             tune_allocator=False, conv_bias=True,
                                             xla_fast_flags=False),
                    "versions": _versions},
}
