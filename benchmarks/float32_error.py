r"""How far jmeta's float32 meta-gradients on the peer workload are from float64, task by task.

  python benchmarks/float32_error.py                   # jmeta's defaults
  python benchmarks/float32_error.py --conv_bias --no-xla_fast_flags   # as before 2026-12-01

For each of the harness's 64 tasks (4 meta-batches of 16) and each variant, the float32
meta-gradient of that one task against the same computation in float64 (relative L2 error over
every parameter but the convolution biases, whose true gradient is zero). Then, for the tasks
with the largest errors, how much the float64 meta-gradient itself moves when the support images
move by 1e-7 (relative L2, the largest over ±`--directions` random directions): a task whose
float64 answer moves that much is ill-posed at float32's resolution (a max-pool winner flips),
and no float32 implementation can match it there. Prints one JSON line per variant.
docs/PERFORMANCE.md ("Convolution biases before batch norm").
"""
import argparse
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--peers_dir", default=os.path.join(_HERE, "..", "..", "shared", "peers"))
  parser.add_argument("--variants", default="fo,so")
  parser.add_argument("--conv_bias", action="store_true",
                      help="keep the harness's convolution biases (jmeta leaves them out)")
  parser.add_argument("--xla_fast_flags", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--worst", type=int, default=4, help="tasks whose sensitivity is probed")
  parser.add_argument("--directions", type=int, default=32,
                      help="random ±1e-7 perturbations of the support images per probed task")
  args = parser.parse_args(argv)
  sys.path.insert(0, os.path.abspath(args.peers_dir))
  sys.path.insert(0, _HERE)
  import jmeta_peer  # pylint: disable=g-import-not-at-top
  if args.xla_fast_flags:
    from experiments import xla_cpu  # pylint: disable=g-import-not-at-top
    xla_cpu.add_fast_flags()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import workload as W  # pylint: disable=g-import-not-at-top
  from jmeta import models, types  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)

  model = models.conv4.make(image_size=W.IMG_H, channels=W.IMG_C, width=W.HIDDEN,
                            num_blocks=W.N_BLOCKS, norm="batch", conv_impl="native")
  batches = W.make_batches()

  def task(batch, index, dtype, noise=None):
    support = W.to_nhwc(batch["xs"][index]) + (0 if noise is None else noise)
    return types.Task(support=jnp.asarray(support, dtype),
                      support_labels=jnp.asarray(batch["ys"][index], jnp.int32),
                      query=jnp.asarray(W.to_nhwc(batch["xq"][index]), dtype),
                      query_labels=jnp.asarray(batch["yq"][index], jnp.int32))

  for variant in args.variants.split(","):
    adapter, objective = jmeta_peer.build_objective(variant, model.apply)
    grad_fn = jax.jit(jax.grad(lambda p, t: objective(p, jax.random.key(0), t)[0]))

    def flat_grad(meta_params, one_task):
      grads = jax.device_get(grad_fn(meta_params, one_task)["params"])
      grads = jmeta_peer.params_to_workload(grads)
      return np.concatenate([np.asarray(g, np.float64).ravel() for name, g in sorted(grads.items())
                             if not (name.startswith("conv") and name.endswith(".bias"))])

    params = jmeta_peer.params_from_workload(W.init_params(), args.conv_bias)
    meta = {dtype: adapter.init_meta(jax.tree.map(lambda p, d=dtype: p.astype(d), params))
            for dtype in (jnp.float32, jnp.float64)}
    errors, tasks = [], []
    for batch in batches:
      for index in range(len(batch["xs"])):
        exact = flat_grad(meta[jnp.float64], task(batch, index, jnp.float64))
        approx = flat_grad(meta[jnp.float32], task(batch, index, jnp.float32))
        errors.append(float(np.linalg.norm(approx - exact) / np.linalg.norm(exact)))
        tasks.append((batch, index, exact))
    errors = np.asarray(errors)
    worst = []
    for position in np.argsort(-errors)[:args.worst]:
      batch, index, exact = tasks[position]
      moves = []
      for seed in range(args.directions // 2):
        direction = np.random.default_rng(seed).normal(size=W.to_nhwc(batch["xs"][index]).shape)
        for sign in (1e-7, -1e-7):
          moved = flat_grad(meta[jnp.float64], task(batch, index, jnp.float64, sign * direction))
          moves.append(float(np.linalg.norm(moved - exact) / np.linalg.norm(exact)))
      worst.append({"task": int(position), "float32_error": round(float(errors[position]), 6),
                    "float64_largest_move_under_1e-7_noise": float(f"{max(moves):.3g}")})
    print(json.dumps({"variant": variant, "conv_bias": args.conv_bias,
                      "xla_flags": os.environ.get("XLA_FLAGS", ""), "tasks": len(errors),
                      "median_error": float(f"{np.median(errors):.3g}"),
                      "tasks_over_1e-2": int((errors > 1e-2).sum()),
                      "max_error": float(f"{errors.max():.3g}"), "worst": worst}), flush=True)


if __name__ == "__main__":
  main()
