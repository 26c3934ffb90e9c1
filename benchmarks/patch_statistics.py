r"""Batch statistics from the input patches (`layers.conv_batch_norm_relu_max_pool`) against the
statistics of the convolution's output, on the peer workload: step time and float32 accuracy.

  python benchmarks/patch_statistics.py                          # so, fo, bmg1; 20 rounds each
  python benchmarks/patch_statistics.py --sections step --variants so --rounds 40
  python benchmarks/patch_statistics.py --sections accuracy --variants so,bmg2
  taskset -c 0 python benchmarks/patch_statistics.py --sections layer   # the layer alone

"step": both steps (`benchmarks/jmeta_peer.py`'s `Runner`, the plugin's defaults: two devices,
XLA flags, allocator) are compiled in ONE process, one with the output's statistics
(`PATCH_STATISTICS_MAX_ENTRIES = 0`) and one with the patches' (the default), and their steps
alternate, so that the machine's drift, which moves a step by ±20% within minutes here, hits
both alike. Prints each setting's median and the median of the paired ratios.
"accuracy": the float32 loss and meta-gradient of 2 tasks of the harness's meta-batch 0 against
float64 (as `tests/layers_speed_paths_test.py` does), for both settings; also the float64
difference between them (the same function: rounding only).
"layer": Conv4's first block alone, forward and gradient, at the query's 75 and the support's
5 images.
docs/PERFORMANCE.md ("Batch statistics from the input patches").
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from unittest import mock

_HERE = os.path.dirname(os.path.abspath(__file__))
_SETTINGS = (("output_statistics", 0), ("patch_statistics", None))  # None: the library default


def _statistics_limit(limit):
  """`layers.PATCH_STATISTICS_MAX_ENTRIES` set to `limit` (None: the library default) for what
  is traced inside, restored on exit. The layer reads it when a step is traced (its first call)."""
  from jmeta.models import layers  # pylint: disable=g-import-not-at-top
  if limit is None:
    return contextlib.nullcontext()
  return mock.patch.object(layers, "PATCH_STATISTICS_MAX_ENTRIES", limit)


def time_steps(jmeta_peer, variant: str, rounds: int) -> dict:
  """Both settings' steps alternated (the order flips every round) after one compile each."""
  runners = {}
  for name, limit in _SETTINGS:
    with _statistics_limit(limit):
      runners[name] = jmeta_peer.Runner(variant)
      runners[name].step(0)
    runners[name].step(1)
  times = {name: [] for name in runners}
  order = list(runners)
  for i in range(rounds):
    for name in (order if i % 2 == 0 else order[::-1]):
      start = time.perf_counter()
      runners[name].step(i)
      times[name].append((time.perf_counter() - start) * 1e3)
  before, after = times["output_statistics"], times["patch_statistics"]
  return {"section": "step", "variant": variant, "rounds": rounds,
          "output_statistics_ms": round(statistics.median(before), 1),
          "patch_statistics_ms": round(statistics.median(after), 1),
          "median_ratio": round(statistics.median([b / a for a, b in zip(before, after)]), 4),
          "output_statistics_all_ms": [round(t) for t in before],
          "patch_statistics_all_ms": [round(t) for t in after], "loadavg": os.getloadavg()}


def accuracy(jmeta_peer, variant: str, num_tasks: int = 2) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import workload  # pylint: disable=g-import-not-at-top
  from jmeta import train, types  # pylint: disable=g-import-not-at-top
  from jmeta.models import conv4  # pylint: disable=g-import-not-at-top
  batch = workload.make_batches(1)[0]
  keys = jax.random.split(jax.random.key(0), num_tasks)

  def loss_and_grad(limit, dtype):
    as_images = lambda v: jnp.asarray(workload.to_nhwc(v[:num_tasks]), dtype)
    tasks = types.Task(support=as_images(batch["xs"]),
                       support_labels=jnp.asarray(batch["ys"][:num_tasks], jnp.int32),
                       query=as_images(batch["xq"]),
                       query_labels=jnp.asarray(batch["yq"][:num_tasks], jnp.int32))
    model = conv4.make(image_size=workload.IMG_H, channels=workload.IMG_C, width=workload.HIDDEN,
                       num_blocks=workload.N_BLOCKS, conv_impl="native")
    adapter, objective = jmeta_peer.build_objective(variant, model.apply)
    params = jmeta_peer.params_from_workload(workload.init_params(), conv_bias=False)
    meta_params = jax.tree.map(lambda v: jnp.asarray(v, dtype), adapter.init_meta(params))
    mapped = train.map_tasks(objective, task_chunk_size=1)
    with _statistics_limit(limit):
      loss, grads = jax.jit(jax.value_and_grad(
          lambda p: jnp.mean(mapped(p, keys, tasks)[0])))(meta_params)
    return float(loss), np.concatenate([np.ravel(np.asarray(g, np.float64))
                                        for g in jax.tree.leaves(grads)])

  def relative(loss, grad, reference):
    return (abs(loss - reference[0]) / abs(reference[0]),
            float(np.linalg.norm(grad - reference[1]) / np.linalg.norm(reference[1])))

  with jax.enable_x64(True):
    references = {name: loss_and_grad(limit, jnp.float64) for name, limit in _SETTINGS}
  record = {"section": "accuracy", "variant": variant, "tasks": num_tasks}
  record["float64_loss_diff"], record["float64_grad_diff"] = relative(
      *references["patch_statistics"], references["output_statistics"])
  for name, limit in _SETTINGS:
    record[f"{name}_float32_loss_error"], record[f"{name}_float32_grad_error"] = relative(
        *loss_and_grad(limit, jnp.float32), references["output_statistics"])
  return record


def time_layer(images: int, calls: int = 100) -> dict:
  """Conv4's first block alone (28×28×1 -> 64 channels, no bias) on `images` uniform images:
  median ms of the jitted layer and of its gradient in (kernel, scale, offset), both settings."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jmeta.models import layers  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.uniform(keys[0], (images, 28, 28, 1))
  params = (layers.uniform_init(keys[1], (3, 3, 1, 64), fan_in=9), jnp.ones(64), jnp.zeros(64))
  weights = jax.random.normal(keys[2], (images, 14, 14, 64))

  def median_ms(fn):
    jax.block_until_ready(fn(*params))
    times = []
    for _ in range(calls):
      start = time.perf_counter()
      jax.block_until_ready(fn(*params))
      times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 3)

  record = {"section": "layer", "images": images}
  for name, limit in _SETTINGS:
    layer = lambda k, s, o: layers.conv_batch_norm_relu_max_pool(x, k, None, s, o)
    grad = jax.grad(lambda k, s, o: jnp.sum(layer(k, s, o) * weights), argnums=(0, 1, 2))
    with _statistics_limit(limit):  # median_ms's first call compiles
      record[f"{name}_forward_ms"] = median_ms(jax.jit(layer))
      record[f"{name}_gradient_ms"] = median_ms(jax.jit(grad))
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--peers_dir", default=os.path.join(_HERE, "..", "..", "shared", "peers"))
  parser.add_argument("--sections", default="step,accuracy,layer",
                      help="comma list of step, accuracy, layer")
  parser.add_argument("--variants", default="so,fo,bmg1", help="comma list ('so', 'fo', 'bmgL')")
  parser.add_argument("--rounds", type=int, default=20, help="alternated steps per setting")
  args = parser.parse_args(argv)
  sections = args.sections.split(",")
  unknown = sorted(set(sections) - {"step", "accuracy", "layer"})
  if unknown:
    parser.error(f"--sections: {unknown} unknown; allowed: step, accuracy, layer")
  sys.path.insert(0, os.path.abspath(args.peers_dir))
  sys.path.insert(0, _HERE)
  import jmeta_peer  # pylint: disable=g-import-not-at-top
  from experiments import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.add_fast_flags()  # as the plugin's Runner does; before JAX's backend starts
  jmeta_peer.tune_malloc()
  for variant in args.variants.split(","):
    if "step" in sections:
      print(json.dumps(time_steps(jmeta_peer, variant, args.rounds)), flush=True)
    if "accuracy" in sections:
      print(json.dumps(accuracy(jmeta_peer, variant)), flush=True)
  if "layer" in sections:
    for images in (75, 5):
      print(json.dumps(time_layer(images)), flush=True)


if __name__ == "__main__":
  main()
