r"""Trains a jmeta experiment: `python -m experiments.train --config=configs/X.py[:arg] --workdir=DIR`.

Examples:
  python -m experiments.train --config=configs/bmssl_omniglot.py --workdir=workdirs/bmssl
  python -m experiments.train --config=configs/bmssl_omniglot.py:smoke --workdir=/tmp/smoke \
      --config.inner.num_steps=2

The run resumes from the newest checkpoint in --workdir; SIGTERM/SIGINT save and exit.
"""
import json
import logging
import os
import signal
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags; defined only when run as a program, so modules import cleanly."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for multi-process runs.")
  flags.DEFINE_bool("multihost", False,
                    "Join a multi-host job via jax.distributed; without the flags below JAX "
                    "auto-detects Slurm, Open MPI and TPU pod environments.")
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index.")
  flags.DEFINE_integer("heartbeat_timeout_seconds", 100,
                       "Multi-process: a process silent this long is declared dead and the "
                       "others exit with an error instead of hanging.")
  flags.DEFINE_integer("initialization_timeout", 300,
                       "Multi-process: seconds to wait for every process to join.")
  flags.DEFINE_bool("xla_cpu_fast_flags", True,
                    "Add experiments/xla_cpu.py's FAST_FLAGS to XLA_FLAGS before JAX starts "
                    "(XLA:CPU's older loop-fusion emitter: 12-19% faster steps on CPU, "
                    "docs/PERFORMANCE.md).")


class NonFiniteError(RuntimeError):
  """Training produced NaN/inf and the config says to stop."""


def run(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the last metrics."""
  import jax
  import numpy as np
  import tqdm

  from experiments import checkpoints as checkpoints_lib
  from experiments import config_checks
  from experiments import factories
  from experiments import metrics_log
  from experiments import workdir as workdir_lib
  from jmeta import evaluate
  from jmeta import parallel
  from jmeta import tasks
  from jmeta import train

  # ----------------------------------------------------------------------------------------------
  # Set-up: checks before anything heavy, one process per workdir, what ran.
  config_checks.check_static(config)
  if jax.process_count() > 1:
    config_checks.check_same_across_processes(config)
  is_main = jax.process_index() == 0
  lock = workdir_lib.WorkdirLock(workdir) if is_main else None
  try:
    if is_main:
      workdir_lib.save_run_info(workdir, config)
    mesh = parallel.make_mesh(config.num_devices or None)

    # --------------------------------------------------------------------------------------------
    # Data.
    train_set = factories.take_first(
        factories.load_dataset(config.data, config.data.train_split,
                               rotations=config.data.train_rotations),
        config.data.max_train_images)
    eval_set = factories.load_dataset(config.data, config.data.eval_split,
                                      rotations=config.data.eval_rotations)
    config_checks.check_data(config, train_set, eval_set, num_shards=mesh.size)
    data = factories.training_data(config, train_set, mesh)
    workdir_lib.record_data_shards(workdir, data, labeled=config.tasks.labels != "none")

    # --------------------------------------------------------------------------------------------
    # Model, objective, optimizer, state.
    model = factories.build_model(config.model, image_size=config.data.image_size,
                                  channels=train_set.images.shape[-1])
    adapter, objective = factories.build_objective(config, model)
    key_init, key_loop = factories.run_keys(config)
    optimizer = factories.build_optimizer(config.optimizer, num_steps=config.num_steps)
    state = factories.initial_state(config, model, adapter, optimizer, key_init)
    update = train.make_update(
        objective, optimizer,
        sample_tasks=factories.build_sampler(config, factories.build_augment(config.augment)),
        num_tasks=config.tasks.num_tasks, task_chunk_size=config.task_chunk_size or None,
        mesh=mesh if mesh.size > 1 else None)

    checkpoints = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                              keep=config.keep_checkpoints)
    restored = checkpoints.restore_latest(state)
    if restored is not None:
      state = restored
    state = parallel.replicate(state, mesh)
    start_step = int(state.step)
    if restored is not None:
      logging.warning("resumed from step %d of %s", start_step, workdir)
    log = metrics_log.MetricsLog(workdir, enabled=is_main, resume_step=start_step)

    eval_pool = tasks.labeled_pool(eval_set)  # on this process's default device

    def evaluate_now(meta_params):
      # Parameters as a traced argument: every periodic evaluation reuses one compilation.
      result = evaluate.few_shot(model.apply, eval_pool, num_ways=config.eval.num_ways,
                                 num_shots=config.eval.num_shots,
                                 num_queries=config.eval.num_queries,
                                 num_episodes=config.eval.num_episodes, seed=config.eval.seed,
                                 batch_size=config.eval.batch_size, progress=False,
                                 params=jax.device_get(meta_params["params"]["encoder"]))
      return {"eval_accuracy": result.mean, "eval_ci95": result.ci95}

    # --------------------------------------------------------------------------------------------
    # Signals: finish the current step, save, exit.
    stop_signal = []
    previous_handlers = {}

    def request_stop(signum, frame):
      del frame
      stop_signal.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
      previous_handlers[signum] = signal.signal(signum, request_stop)

    # --------------------------------------------------------------------------------------------
    # Loop.
    metrics = {}
    if start_step == 0 and config.eval.at_start:
      # The untrained initialisation under the same protocol: the baseline every curve starts at.
      log.write(0, dict(evaluate_now(state.meta_params), wall_s=0.0))
    wall_start = time.time()
    bar = tqdm.tqdm(total=config.num_steps, initial=start_step, disable=not is_main,
                    desc="train", unit="step", dynamic_ncols=True)
    step = start_step
    try:
      while step < config.num_steps and not stop_signal:
        state, step_metrics = update(state, key_loop, data)
        step += 1
        if not bool(step_metrics["finite"]):
          bad = [name for name, value in step_metrics.items()
                 if not np.all(np.isfinite(np.asarray(value)))]
          message = (f"step {step}: non-finite {', '.join(bad) or 'gradient'}; the update was "
                     "not applied")
          if config.optimizer.nonfinite == "stop":
            raise NonFiniteError(message + " (optimizer.nonfinite='stop'); the last good "
                                 "checkpoint is kept.")
          logging.warning("%s (skipped %d so far)", message, int(state.num_skipped))
          if int(state.num_skipped) >= config.optimizer.max_skipped:
            raise NonFiniteError(f"{int(state.num_skipped)} updates were skipped for "
                                 f"non-finite values (optimizer.max_skipped="
                                 f"{config.optimizer.max_skipped}); stopping. Last: {message}.")
        bar.update(1)
        if step % config.log_every_steps == 0 or step == config.num_steps:
          metrics = {name: float(value) for name, value in jax.device_get(step_metrics).items()}
          metrics["wall_s"] = time.time() - wall_start
          if step % config.eval.every_steps == 0 or step == config.num_steps:
            metrics.update(evaluate_now(state.meta_params))
          log.write(step, metrics)
          bar.set_postfix(loss=f"{metrics['meta_loss']:.3f}",
                          acc=f"{metrics.get('query_accuracy_after', float('nan')):.3f}")
        if step % config.checkpoint_every_steps == 0:
          checkpoints.save(step, state)
      checkpoints.save(step, state)
    finally:
      bar.close()
      for signum, handler in previous_handlers.items():
        signal.signal(signum, handler)
    if stop_signal:
      logging.warning("signal %d: saved step %d, exiting", stop_signal[0], step)
    else:
      final = {"fingerprint": workdir_lib.fingerprint(state.meta_params), "final": True}
      log.write(step, dict(metrics, **final))
      metrics.update(final)
    log.close()
    checkpoints.close()
    metrics["step"] = step
    metrics["stopped_by_signal"] = bool(stop_signal)
    return metrics
  finally:
    if lock is not None:
      lock.release()


def main(argv):
  del argv
  # Orbax and absl log every save at INFO; warnings and our own progress bar are what matter.
  logging.getLogger().setLevel(logging.WARNING)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  from experiments import config_checks
  from experiments import workdir as workdir_lib
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  if FLAGS.xla_cpu_fast_flags:
    from experiments import xla_cpu
    xla_cpu.add_fast_flags()
  if FLAGS.multihost or FLAGS.coordinator_address or FLAGS.num_processes:
    from jmeta import parallel
    parallel.initialize_distributed(coordinator_address=FLAGS.coordinator_address,
                                    num_processes=FLAGS.num_processes,
                                    process_id=FLAGS.process_id,
                                    initialization_timeout=FLAGS.initialization_timeout,
                                    heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds)
  try:
    metrics = run(FLAGS.config, FLAGS.workdir)
  except (config_checks.ConfigError, workdir_lib.WorkdirInUseError, NonFiniteError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(metrics))
  if metrics.get("stopped_by_signal"):
    sys.exit(143)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config"])
  app.run(main)
