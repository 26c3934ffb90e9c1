"""End-to-end tests of the experiment launcher on the real Omniglot data.

Every config's `smoke` preset trains, checkpoints, evaluates and plots; a run interrupted by
SIGTERM resumes to bitwise the same parameters; bad configurations fail before compiling.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from experiments import evaluate as evaluate_lib
from experiments import metrics_log
from experiments import plot as plot_lib
from experiments import train as train_lib
from experiments import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["bmssl_omniglot", "umtra_omniglot", "simclr_omniglot", "maml_omniglot",
           "protonet_omniglot"]


def load_config(name, arg="smoke"):
  import importlib
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.fixture
def env(data_dir, cache_dir, monkeypatch):
  monkeypatch.setenv("JMETA_DATA_DIR", str(data_dir))
  return dict(os.environ, JMETA_DATA_DIR=str(data_dir), JMETA_CACHE_DIR=str(cache_dir))


@pytest.mark.parametrize("name", CONFIGS)
def test_smoke_config_trains_checkpoints_evaluates_and_plots(name, env, tmp_path):
  config = load_config(name)
  workdir = str(tmp_path / name)
  metrics = train_lib.run(config, workdir)
  assert metrics["step"] == config.num_steps
  assert len(metrics["fingerprint"]) == 64
  records = metrics_log.read(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records] == list(range(1, config.num_steps + 1)) + [config.num_steps]
  assert all(r["finite"] == 1.0 for r in records)
  assert "eval_accuracy" in records[-1]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(
      str(s) for s in range(config.checkpoint_every_steps, config.num_steps + 1,
                            config.checkpoint_every_steps))
  for filename in ("config.json", "versions.json"):
    assert os.path.exists(os.path.join(workdir, filename))
  rows = evaluate_lib.evaluate_workdir(workdir, ways=(5,), shots=(1,), num_queries=5,
                                       num_episodes=4, progress=False,
                                       adapted="no" if config.inner.adapter == "none" else "both")
  assert all(0.0 <= row["accuracy"] <= 1.0 and row["step"] == config.num_steps for row in rows)
  if name == "bmssl_omniglot":
    # Zero adaptation steps leave the meta-learned encoder: the same cosine prototypes as
    # without adaptation, so the same accuracy on the same episodes.
    zero_steps = evaluate_lib.evaluate_workdir(
        workdir, ways=(5,), shots=(1,), num_queries=5, num_episodes=4, progress=False,
        adapted="yes", inner_overrides={"num_steps": 0, "adapter": "prototype"})
    assert zero_steps[0]["adaptation"] == {"adapter": "prototype", "num_steps": 0,
                                           "step_size": config.inner.step_size}
    assert zero_steps[0]["accuracy"] == rows[0]["accuracy"]
    # A config.json written before model.conv_bias existed (Conv4 had biases then) still
    # builds the model its checkpoints were saved from.
    config_path = os.path.join(workdir, "config.json")
    saved = json.loads(open(config_path).read())
    assert saved["model"]["conv_bias"] is None
    del saved["model"]["conv_bias"]
    with open(config_path, "w") as file:
      json.dump(saved, file)
    _, _, _, old_params, _ = evaluate_lib.load_workdir(workdir, untrained=True)
    import jax  # pylint: disable=import-outside-toplevel
    paths = [jax.tree_util.keystr(path) for path, _ in
             jax.tree_util.tree_flatten_with_path(old_params)[0]]
    conv_biases = [path for path in paths if "'conv']['bias']" in path]
    assert len(conv_biases) == config.model.num_blocks, paths
    with pytest.raises(ValueError, match="temperature"):
      evaluate_lib.evaluate_workdir(workdir, ways=(5,), shots=(1,), num_episodes=1,
                                    progress=False, adapted="yes",
                                    inner_overrides={"temperature": 0.1})
    with pytest.raises(ValueError, match="need adaptation"):
      evaluate_lib.evaluate_workdir(workdir, ways=(5,), shots=(1,), num_episodes=1,
                                    progress=False, inner_overrides={"num_steps": 3})
  png = plot_lib.plot([workdir], str(tmp_path / "curves.png"))
  assert os.path.getsize(png) > 1000


def _launch(workdir, env, *overrides):
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.train", "--config=configs/bmssl_omniglot.py:smoke",
       f"--workdir={workdir}", *overrides],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_then_resume_is_bitwise_equal_to_uninterrupted_run(env, tmp_path):
  overrides = ["--config.num_steps=8", "--config.checkpoint_every_steps=2",
               "--config.eval.every_steps=100"]
  straight = _launch(tmp_path / "straight", env, *overrides)
  interrupted = _launch(tmp_path / "interrupted", env, *overrides)
  metrics_file = tmp_path / "interrupted" / "metrics.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and interrupted.poll() is None:
    if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3:
      break
    time.sleep(0.2)
  interrupted.send_signal(signal.SIGTERM)
  _, err = interrupted.communicate(timeout=120)
  assert interrupted.returncode == 143, err[-2000:]
  steps_done = metrics_log.read(str(metrics_file))[-1]["step"]
  assert steps_done < 8
  resumed = _launch(tmp_path / "interrupted", env, *overrides)
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-2000:]
  assert "resumed from step" in err
  out_straight, err_straight = straight.communicate(timeout=600)
  assert straight.returncode == 0, err_straight[-2000:]
  final_resumed = json.loads(out.strip().splitlines()[-1])
  final_straight = json.loads(out_straight.strip().splitlines()[-1])
  assert final_resumed["fingerprint"] == final_straight["fingerprint"]
  records = metrics_log.read(str(metrics_file))
  assert [r["step"] for r in records[:-1]] == list(range(1, 9))
  # The launcher added XLA:CPU's fast flags before JAX started, and says so.
  versions = json.loads((tmp_path / "straight" / "versions.json").read_text())
  for flag in xla_cpu.fast_flags({}, versions["jaxlib"]):
    assert flag in versions["xla_flags"].split()


@pytest.mark.parametrize("override, field", [
    ("--config.tasks.num_support=1", "tasks.num_support"),
    ("--config.optimizer.learning_rate=-0.1", "optimizer.learning_rate"),
    ("--config.tasks.num_ways=100000", "tasks.num_ways"),
    ("--config.num_devices=64", "num_devices"),
    ("--config.model.norm=layer", "model.norm"),
    ("--config.meta.mix=1.5", "meta.mix"),
    ("--config.eval.num_ways=1000", "eval.num_ways"),
])
def test_bad_configuration_exits_nonzero_naming_the_field(override, field, env, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=configs/bmssl_omniglot.py:smoke",
       f"--workdir={tmp_path}", override], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode != 0
  assert field in result.stderr


@pytest.mark.parametrize("override", ["--config.no_such_field=1", "--config.tasks.num_ways=five"])
def test_unknown_field_or_wrong_type_is_refused(override, env, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=configs/bmssl_omniglot.py:smoke",
       f"--workdir={tmp_path}", override], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode != 0
  assert override.split("=")[0].removeprefix("--config.").split(".")[-1] in result.stderr


def test_config_arg_parsing_names_bad_keys():
  with pytest.raises(ValueError, match="smok"):
    load_config("bmssl_omniglot", "smok")
  with pytest.raises(ValueError, match="first_order"):
    load_config("maml_omniglot", "first_order=maybe")
  assert load_config("maml_omniglot", "first_order").inner.first_order is True
