r"""Meta-step throughput, fraction of peak, memory, compile cost and scaling: JSON lines.

Sections (`--sections`, comma list; default all):
  peak     N=4096 float32 `jnp.matmul` GFLOP/s (median of >=5 reps, >=3 s): the machine's limit
           used for `fraction_of_peak` below.
  peer     the peer harness workload (benchmarks/peer_workload.py) for so, fo, bmg1, bmg5 with
           the default runner and with the library's plain path: ms/step, tasks/s, XLA GFLOP per
           step (loops unrolled), achieved GFLOP/s, fraction of peak, compile time and count.
  bmssl    meta.bmssl on unsupervised tasks sampled and augmented inside the jitted step
           (train.make_update): Conv4 on 28x28, N in --bmssl_ways views-as-classes, S and Q
           views per image as the default config's, L=--bmssl_inner_steps, delta in
           --bmssl_deltas, T=--bmssl_tasks (defaults: the default config's N=20, L=1, T=4, its
           augmentations, temperatures and BMG query step), per
           --bmssl_paths; the share of the step spent sampling + augmenting (the sampler jitted
           alone); for delta > 0 the budget: the delta=0 step + delta first-order inner steps
           (the last one a query cross-entropy step with --bmssl_query_step) + the target's
           predictions.
  memory   peak memory of one so meta-gradient vs inner steps L in {1, 5, 10, 20}, with and
           without remat: XLA's compiled memory_analysis (temp + arguments + outputs) and the
           ru_maxrss of a subprocess that runs it once.
  scaling  ms/step and tasks/s vs the meta-batch T in {4, 8, 16, 32} (peer workload, so).

  python benchmarks/meta_step.py --peers_dir ../shared/peers > /tmp/meta_step.jsonl
  python benchmarks/meta_step.py --sections bmssl --steps 3

Every record carries `loadavg` (os.getloadavg() right after it was measured): this machine is
shared, so compare records taken at similar load.
"""
import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)


def _emit(record):
  record["loadavg"] = [round(x, 2) for x in os.getloadavg()]
  print(json.dumps(record), flush=True)


def _time_steps(step, num_steps, warmup=1):
  """(first-call seconds, median, min of `num_steps` timed calls); `step(i)` must block."""
  t = time.perf_counter()
  step(0)
  first = time.perf_counter() - t
  for i in range(1, warmup):
    step(i)
  times = []
  for i in range(warmup, warmup + num_steps):
    t = time.perf_counter()
    step(i)
    times.append(time.perf_counter() - t)
  return first, statistics.median(times), min(times)


def _subprocess_json(args, timeout=3600):
  result = subprocess.run([sys.executable] + args, capture_output=True, text=True,
                          timeout=timeout, check=False)
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  if result.returncode or not lines:
    return [{"error": result.stderr.strip().splitlines()[-3:], "args": args}]
  return [json.loads(line) for line in lines]


# ------------------------------------------------------------------------------------------------


def section_peak(args):
  del args
  import jax
  import jax.numpy as jnp
  n = 4096
  a = jax.random.uniform(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.uniform(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  times, end = [], time.perf_counter() + 3.0
  while len(times) < 5 or time.perf_counter() < end:
    t = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  gflops = 2 * n ** 3 / statistics.median(times) / 1e9
  _emit({"section": "peak", "lib": "jax", "n": n, "gflops_median": round(gflops, 1),
         "gflops_best": round(2 * n ** 3 / min(times) / 1e9, 1), "reps": len(times)})
  return gflops


def section_peer(args, peak):
  for config in ("default", "plain"):
    for variant in ("so", "fo", "bmg1", "bmg5"):
      for record in _subprocess_json([os.path.join(_HERE, "peer_workload.py"), "--peers_dir",
                                      args.peers_dir, "--config", config, "--variants", variant,
                                      "--steps", str(args.steps)]):
        record["section"] = "peer"
        if peak and "achieved_gflops" in record:
          record["peak_gflops"] = round(peak, 1)
          record["fraction_of_peak"] = round(record["achieved_gflops"] / peak, 3)
        record.pop("step_s", None)
        _emit(record)


# ------------------------------------------------------------------------------------------------
# BMSSL: unsupervised tasks sampled + augmented inside the step.


def _bmssl_setup(config, num_ways, num_inner_steps, delta, conv_impl, num_tasks, query_step,
                 image_pool=2000):
  import jax
  import numpy as np
  import optax
  from experiments import factories
  from jmeta import meta, models, tasks, train
  model = models.conv4.make(image_size=28, channels=1, width=64, num_blocks=4, norm="batch",
                            conv_impl=conv_impl)
  adapter, objective = meta.bmssl(
      model.apply, num_ways=num_ways, step_size=config.inner.step_size,
      num_inner_steps=num_inner_steps, num_bootstrap_steps=delta, mix=config.meta.mix,
      inner_temperature=config.inner.temperature, temperature=config.meta.temperature,
      bmg_query_step=query_step and delta > 0, extra_metrics=False)
  augment_fn = factories.build_augment(config.augment)  # the default config's views
  sample = functools.partial(tasks.sample_unsupervised_tasks, num_tasks=num_tasks,
                             num_ways=num_ways, num_support=config.tasks.num_support,
                             num_queries=config.tasks.num_queries,
                             augment_fn=augment_fn)
  images = jax.device_put(np.random.default_rng(0).integers(0, 256, (image_pool, 28, 28, 1),
                                                             dtype=np.uint8))
  optimizer = optax.adam(1e-3)
  state = train.init_state(adapter.init_meta({"encoder": model.init(jax.random.key(0))}),
                           optimizer)
  return model, adapter, objective, optimizer, sample, images, state


def _bootstrap_parts_ms(model, adapter, sample, images, meta_params, num_ways, temperature,
                        chunk, num_steps):
  """What the bootstrap adds, timed alone over the T tasks (as the step runs them, no outer
  gradient): one first-order inner step (SupCon forward + backward on the support, SGD), of
  which the target takes δ (δ − 1 with the BMG query step); one first-order step on the query
  cross-entropy (forward + backward on support and query, SGD), the query step's cost; and the
  target's predictions (prototype logits: a forward pass on support and query)."""
  import jax
  from jmeta import classifiers, inner, losses
  from jmeta.types import Batch
  logits_fn = classifiers.prototype(model.apply, num_ways=num_ways, distance="cosine",
                                    temperature=temperature)

  def inner_step(task):
    state, _ = inner.update(adapter, jax.random.key(0), adapter.init(meta_params),
                            Batch(task.support, task.support_labels))
    return state.params

  def query_step(task):
    support = Batch(task.support, task.support_labels)
    state, _ = adapter.step(adapter.init(meta_params), lambda params: (losses.cross_entropy(
        logits_fn(params, support, task.query), task.query_labels), {}))
    return state.params

  def predictions(task):
    return logits_fn(meta_params["params"], Batch(task.support, task.support_labels),
                     task.query)

  batch = jax.jit(sample)(jax.random.key(0), images)
  times = []
  for per_task in (inner_step, query_step, predictions):
    run = (jax.jit(lambda tasks, f=per_task: jax.lax.map(f, tasks)) if chunk
           else jax.jit(jax.vmap(per_task)))
    _, median, _ = _time_steps(lambda i, run=run: jax.block_until_ready(run(batch)), num_steps)
    times.append(median * 1e3)
  return times


def section_bmssl(args):
  """BMSSL's step for δ in --bmssl_deltas, and the bootstrap's cost against its budget.

  The budget of δ bootstrap steps is the δ = 0 step plus δ first-order inner steps (the target
  is the adapted model moved δ more steps, held fixed; with --bmssl_query_step the last of them
  is a step on the query cross-entropy instead) plus the target's predictions (the δ = 0
  step's target is the adapted model itself, whose predictions it has already computed);
  `over_budget_ms` > 0 is overhead beyond that.
  """
  import jax
  from configs import bmssl_omniglot
  from jmeta import train
  # The default run's views (S, Q and augmentations), temperatures and query step.
  config = bmssl_omniglot.get_config()
  query_step = (config.meta.bmg_query_step if args.bmssl_query_step is None
                else args.bmssl_query_step)
  paths = []
  for path in args.bmssl_paths:
    impl, _, chunk = path.partition(":")
    paths.append((impl, None if chunk in ("", "all") else int(chunk)))
  for num_ways in args.bmssl_ways:
    for conv_impl, chunk in paths:
      baseline_ms = None
      for delta in args.bmssl_deltas:
        model, adapter, objective, optimizer, sample, images, state = _bmssl_setup(
            config, num_ways, args.bmssl_inner_steps, delta, conv_impl, args.bmssl_tasks,
            query_step)
        update = train.make_update(objective, optimizer, sample_tasks=sample,
                                   num_tasks=args.bmssl_tasks,
                                   task_chunk_size=chunk)
        holder = {"state": state}

        def step(i, update=update, holder=holder, images=images):
          holder["state"], metrics = update(holder["state"], jax.random.key(1), images)
          jax.block_until_ready(holder["state"])
          return metrics

        first, median, fastest = _time_steps(step, args.steps)
        sampler = jax.jit(sample)
        sampler(jax.random.key(0), images).support.block_until_ready()
        times = []
        for i in range(max(args.steps, 3)):
          t = time.perf_counter()
          sampler(jax.random.key(i), images).support.block_until_ready()
          times.append(time.perf_counter() - t)
        sampling = statistics.median(times)
        record = {
            "section": "bmssl", "num_ways": num_ways, "num_support": config.tasks.num_support,
            "num_queries": config.tasks.num_queries,
            "delta": delta, "bmg_query_step": query_step and delta > 0,
            "inner_steps": args.bmssl_inner_steps,
            "num_tasks": args.bmssl_tasks,
            "conv_impl": conv_impl, "task_chunk_size": chunk,
            "ms_per_step": round(median * 1e3, 1), "ms_min": round(fastest * 1e3, 1),
            "tasks_per_s": round(args.bmssl_tasks / median, 2),
            "compile_s": round(first - median, 1),
            "sampling_ms": round(sampling * 1e3, 1),
            "sampling_share": round(sampling / median, 3)}
        if delta == 0:
          baseline_ms = median * 1e3
        elif baseline_ms is not None:
          inner_ms, query_step_ms, predictions_ms = _bootstrap_parts_ms(
              model, adapter, sample, images, holder["state"].meta_params, num_ways,
              config.meta.temperature, chunk, args.steps)
          query_steps = int(query_step)
          budget = (baseline_ms + (delta - query_steps) * inner_ms + query_steps * query_step_ms
                    + predictions_ms)
          record.update(first_order_inner_step_ms=round(inner_ms, 1),
                        query_step_ms=round(query_step_ms, 1),
                        target_predictions_ms=round(predictions_ms, 1),
                        budget_ms=round(budget, 1),
                        over_budget_ms=round(median * 1e3 - budget, 1))
        _emit(record)


# ------------------------------------------------------------------------------------------------
# Memory vs inner steps.


def _memory_worker(args):
  """One so meta-gradient of the peer workload with L inner steps: compiled memory analysis and
  the process's peak RSS after running it once."""
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, os.path.abspath(args.peers_dir))
  sys.path.insert(0, _HERE)
  import jmeta_peer  # pylint: disable=g-import-not-at-top
  import workload as W  # pylint: disable=g-import-not-at-top
  from jmeta import classifiers, inner, meta, models, types
  jmeta_peer.tune_malloc()
  num_steps, remat, path = int(args.memory_worker[0]), args.memory_worker[1] == "1", args.memory_worker[2]
  conv_impl = "native" if path != "plain" else "matmul"
  model = models.conv4.make(image_size=28, channels=1, width=64, num_blocks=4, conv_impl=conv_impl)
  adapter = inner.head(model.apply, step_size=W.INNER_LR)
  objective = meta.maml(adapter, classifiers.linear_head(model.apply), num_inner_steps=num_steps,
                        remat=remat, extra_metrics=False)
  meta_params = adapter.init_meta(jmeta_peer.params_from_workload(W.init_params(),
                                                                  conv_bias=path == "plain"))
  b = W.make_batches(1)[0]
  tasks = types.Task(support=jnp.asarray(W.to_nhwc(b["xs"])), support_labels=jnp.asarray(b["ys"], jnp.int32),
                     query=jnp.asarray(W.to_nhwc(b["xq"])), query_labels=jnp.asarray(b["yq"], jnp.int32))
  keys = jax.random.split(jax.random.key(0), W.META_BATCH)
  from jmeta import train  # pylint: disable=g-import-not-at-top
  # plain: all tasks vmapped and differentiated at once; default: one task per chunk, each
  # task's meta-gradient taken inside the loop (one device)
  gradient_fn = train.meta_gradient(objective, num_tasks=W.META_BATCH,
                                    task_chunk_size=None if path == "plain" else 1)
  fn = jax.jit(lambda p: gradient_fn(p, keys, tasks))
  t = time.perf_counter()
  compiled = fn.lower(meta_params).compile()
  compile_s = time.perf_counter() - t
  analysis = compiled.memory_analysis()
  jax.block_until_ready(compiled(meta_params))
  return {"section": "memory", "path": path, "inner_steps": num_steps, "remat": remat,
          "temp_mb": round(analysis.temp_size_in_bytes / 2**20, 1),
          "xla_total_mb": round((analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
                                 + analysis.output_size_in_bytes) / 2**20, 1),
          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
          "compile_s": round(compile_s, 1)}


def section_memory(args):
  for path in args.memory_paths:
    for remat in (0, 1):
      for num_steps in (1, 5, 10, 20):
        for record in _subprocess_json([os.path.abspath(__file__), "--peers_dir", args.peers_dir,
                                        "--memory_worker", str(num_steps), str(remat), path]):
          _emit(record)


# ------------------------------------------------------------------------------------------------
# Scaling with the meta-batch.


def _scaling_worker(args):
  import jax
  import numpy as np
  import optax
  sys.path.insert(0, os.path.abspath(args.peers_dir))
  sys.path.insert(0, _HERE)
  import jmeta_peer  # pylint: disable=g-import-not-at-top
  import workload as W  # pylint: disable=g-import-not-at-top
  from jmeta import models, parallel, train, types
  num_tasks = int(args.scaling_worker)
  jmeta_peer.tune_malloc()
  devices = jmeta_peer.set_cpu_devices(2)
  devices = 2 if devices >= 2 and num_tasks % 2 == 0 else 1
  mesh = parallel.make_mesh(devices) if devices > 1 else None
  model = models.conv4.make(image_size=28, channels=1, width=64, num_blocks=4, conv_impl="native")
  adapter, objective = jmeta_peer.build_objective("so", model.apply)
  optimizer = optax.adam(W.OUTER_LR)
  state = train.init_state(
      adapter.init_meta(jmeta_peer.params_from_workload(W.init_params(), conv_bias=False)),
      optimizer)
  b = W.make_batches(1)[0]
  reps = -(-num_tasks // W.META_BATCH)
  take = lambda x: np.concatenate([x] * reps)[:num_tasks]
  tasks = types.Task(support=take(W.to_nhwc(b["xs"])), support_labels=take(b["ys"]).astype(np.int32),
                     query=take(W.to_nhwc(b["xq"])), query_labels=take(b["yq"]).astype(np.int32))
  if mesh is not None:
    state, tasks = parallel.replicate(state, mesh), parallel.place(tasks, parallel.task_sharding(mesh))
  update = train.make_update(objective, optimizer, sample_tasks=lambda key, data: data,
                             num_tasks=num_tasks, task_chunk_size=1, mesh=mesh)
  holder = {"state": state}

  def step(i):
    holder["state"], _ = update(holder["state"], jax.random.key(0), tasks)
    jax.block_until_ready(holder["state"])

  first, median, fastest = _time_steps(step, args.steps)
  return {"section": "scaling", "variant": "so", "num_tasks": num_tasks, "devices": devices,
          "ms_per_step": round(median * 1e3, 1), "ms_min": round(fastest * 1e3, 1),
          "tasks_per_s": round(num_tasks / median, 2), "compile_s": round(first - median, 1),
          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def section_scaling(args):
  for num_tasks in (4, 8, 16, 32):
    for record in _subprocess_json([os.path.abspath(__file__), "--peers_dir", args.peers_dir,
                                    "--steps", str(args.steps), "--scaling_worker",
                                    str(num_tasks)]):
      _emit(record)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--peers_dir", default=os.path.join(_REPO, "..", "shared", "peers"))
  parser.add_argument("--sections", default="peak,peer,bmssl,memory,scaling")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--memory_paths", type=lambda v: v.split(","), default=["default", "plain"],
                      help="memory section: default (one task per chunk) and/or plain (vmap)")
  parser.add_argument("--bmssl_ways", type=lambda v: [int(n) for n in v.split(",")],
                      default=[20], help="N values of the bmssl section (comma list; "
                      "configs/bmssl_omniglot.py: 20)")
  parser.add_argument("--bmssl_tasks", type=int, default=4,
                      help="bmssl section: T (configs/bmssl_omniglot.py: 4)")
  parser.add_argument("--bmssl_inner_steps", type=int, default=1,
                      help="bmssl section: L (configs/bmssl_omniglot.py: 1)")
  parser.add_argument("--bmssl_deltas", type=lambda v: [int(n) for n in v.split(",")],
                      default=[0, 1, 5], help="bmssl section: δ values; 0 first (the budget)")
  parser.add_argument("--bmssl_query_step", action=argparse.BooleanOptionalAction,
                      help="bmssl section: the last bootstrap step is on the query "
                      "cross-entropy (default: configs/bmssl_omniglot.py's meta.bmg_query_step)")
  parser.add_argument("--bmssl_paths", type=lambda v: v.split(","), default=["native:1"],
                      help="bmssl section: CONV_IMPL:CHUNK list; CHUNK 'all' vmaps every task "
                      "(default: the config's native convolutions, one task per chunk)")
  parser.add_argument("--xla_fast_flags", action=argparse.BooleanOptionalAction, default=True,
                      help="add experiments/xla_cpu.py's flags to XLA_FLAGS first, as the "
                      "launchers do (subprocesses inherit them)")
  parser.add_argument("--memory_worker", nargs=3, help=argparse.SUPPRESS)
  parser.add_argument("--scaling_worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.xla_fast_flags:
    from experiments import xla_cpu  # pylint: disable=g-import-not-at-top
    xla_cpu.add_fast_flags()
  if args.memory_worker:
    print(json.dumps(_memory_worker(args)), flush=True)
    return
  if args.scaling_worker:
    print(json.dumps(_scaling_worker(args)), flush=True)
    return
  sections = args.sections.split(",")
  needs_peers = {"peer", "memory", "scaling"} & set(sections)
  if needs_peers and not os.path.isfile(os.path.join(args.peers_dir, "workload.py")):
    parser.error(f"{args.peers_dir}/workload.py not found; pass --peers_dir")
  peak = None
  if "peak" in sections:  # in a subprocess-free way: this process only measures a matmul
    peak = section_peak(args)
  if "peer" in sections:
    section_peer(args, peak)
  if "bmssl" in sections:
    section_bmssl(args)
  if "memory" in sections:
    section_memory(args)
  if "scaling" in sections:
    section_scaling(args)


if __name__ == "__main__":
  main()
