"""Multi-process training through jax.distributed on loopback equals one process.

2 processes × 2 simulated CPU devices (gloo collectives) against 1 process × 4 devices, same
seed: the same parameters to float tolerance; each process holds a different shard of the
images; a killed process makes the other fail within the heartbeat timeout, and the job
resumes from its last checkpoint.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import evaluate as evaluate_lib
from experiments import launch_local

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/bmssl_omniglot.py:smoke", "--config.tasks.num_tasks=4",
        "--config.num_steps=3", "--config.checkpoint_every_steps=1",
        "--config.eval.every_steps=1000", "--config.eval.num_episodes=2"]


@pytest.fixture
def env(data_dir, cache_dir):
  return dict(os.environ, JMETA_DATA_DIR=str(data_dir), JMETA_CACHE_DIR=str(cache_dir),
              JAX_PLATFORMS="cpu")


def _final_params(workdir):
  _, _, _, meta_params, step = evaluate_lib.load_workdir(str(workdir))
  return step, meta_params


def test_two_processes_equal_one_process_and_read_disjoint_shards(env, tmp_path):
  code = launch_local.launch(ARGS + [f"--workdir={tmp_path / 'multi'}"], num_processes=2,
                             devices_per_process=2, env=env)
  assert code == 0
  single_env = launch_local.with_cpu_devices(env, 4)
  single = subprocess.run([sys.executable, "-m", "experiments.train", *ARGS,
                           f"--workdir={tmp_path / 'single'}"], cwd=REPO, env=single_env,
                          capture_output=True, text=True, timeout=900)
  assert single.returncode == 0, single.stderr[-2000:]
  step_multi, multi = _final_params(tmp_path / "multi")
  step_single, one = _final_params(tmp_path / "single")
  assert step_multi == step_single == 3
  # Conv4 has no conv biases under batch norm (their true gradient is zero, and Adam used to
  # blow their float noise up to ±lr-sized steps that differed with the all-reduce order), so
  # the parameters agree to float32 rounding of the summation order.
  for a, b in zip(jax_leaves(multi), jax_leaves(one)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  logs = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
          for name in ("multi", "single")]
  for field in ("meta_loss", "gradient_norm", "query_accuracy_after"):
    np.testing.assert_allclose([r[field] for r in logs[0]], [r[field] for r in logs[1]],
                               rtol=1e-4)
  records = [json.loads((tmp_path / "multi" / "data_shards" / f"process_{i}.json").read_text())
             for i in range(2)]
  ranges = [tuple(r) for record in records for r in record["image_ranges"]]
  assert [record["process"] for record in records] == [0, 1]
  assert len(ranges) == 4 and len(set(ranges)) == 4  # 4 devices, 4 distinct shards
  assert set(map(tuple, records[0]["image_ranges"])).isdisjoint(
      map(tuple, records[1]["image_ranges"]))
  starts = sorted(start for start, _ in ranges)
  assert starts[0] == 0 and all(b - a == ranges[0][1] - ranges[0][0]
                                for a, b in zip(starts, starts[1:]))


def jax_leaves(tree):
  import jax
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_killed_process_fails_the_other_in_bounded_time_then_job_resumes(env, tmp_path):
  workdir = tmp_path / "run"
  args = ARGS[:2] + ["--config.num_steps=400", "--config.checkpoint_every_steps=1",
                     "--config.eval.every_steps=1000", "--config.eval.num_episodes=2",
                     f"--workdir={workdir}"]
  port = launch_local.free_port()
  process_env = launch_local.with_cpu_devices(env, 2)
  processes = [subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={index}", "--heartbeat_timeout_seconds=10", *args],
      cwd=REPO, env=process_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for index in range(2)]
  deadline = time.time() + 900
  while time.time() < deadline and not (workdir / "checkpoints" / "2").exists():
    assert all(p.poll() is None for p in processes), "a process died before the kill"
    time.sleep(0.5)
  processes[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    processes[0].wait(timeout=120)
  except subprocess.TimeoutExpired:
    processes[0].kill()
    pytest.fail("process 0 still hangs 120 s after its peer was killed")
  assert processes[0].returncode != 0
  assert time.time() - killed_at < 120
  code = launch_local.launch(args[:-3] + ["--config.num_steps=4", f"--workdir={workdir}"],
                             num_processes=2, devices_per_process=2, env=env)
  assert code == 0
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["final"] and lines[-1]["step"] == 4


def _start(index, port, env, *extra):
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={index}", "--initialization_timeout=20", *extra],
      cwd=REPO, env=launch_local.with_cpu_devices(env, 2),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_mismatched_configs_across_processes_are_refused(env, tmp_path):
  port = launch_local.free_port()
  processes = [_start(i, port, env, *ARGS, f"--workdir={tmp_path}",
                      f"--config.seed={i}") for i in range(2)]
  errors = [p.communicate(timeout=300)[1] for p in processes]
  assert all(p.returncode != 0 for p in processes)
  assert any("config differs" in e for e in errors), errors[0][-1500:]


def test_unreachable_coordinator_fails_within_the_initialization_timeout(env, tmp_path):
  start = time.time()
  lone = _start(1, launch_local.free_port(), env, *ARGS, f"--workdir={tmp_path}")
  _, err = lone.communicate(timeout=300)
  assert lone.returncode != 0
  assert time.time() - start < 200, err[-1500:]
