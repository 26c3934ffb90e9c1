"""Non-finite values are caught, reported with their step, and never applied; a run is a
function of its seed: the same seed repeats it bitwise, another seed gives other parameters."""
import os

import pytest

from experiments import metrics_log
from experiments import train as train_lib
from configs import bmssl_omniglot
from configs import common


def tiny_config(seed):
  # One conv block on unaugmented images: a seconds-scale compile; two steps, so the final
  # parameters depend on the sampled tasks as well as the initialisation.
  config = common.disable_augmentation(bmssl_omniglot.get_config("smoke"))
  config.model.num_blocks = 1
  config.num_steps = 2
  config.eval.every_steps = 1000
  config.seed = seed
  return config


def diverging_config(nonfinite, max_skipped=100):
  config = tiny_config(seed=0)
  config.num_steps = 6
  config.inner.step_size = 1e30        # an absurd inner learning rate: NaN within one step
  config.optimizer.gradient_clip = 0.0
  config.optimizer.nonfinite = nonfinite
  config.optimizer.max_skipped = max_skipped
  return config


@pytest.fixture(autouse=True)
def data_env(data_dir, cache_dir, monkeypatch):
  monkeypatch.setenv("JMETA_DATA_DIR", str(data_dir))


def test_nonfinite_stop_names_quantity_and_step_and_keeps_last_checkpoint(tmp_path):
  with pytest.raises(train_lib.NonFiniteError, match=r"step 1: non-finite .*meta_loss"):
    train_lib.run(diverging_config("stop"), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints" / "1")


def test_nonfinite_skip_counts_and_stops_at_the_limit_without_changing_parameters(tmp_path):
  config = diverging_config("skip", max_skipped=3)
  with pytest.raises(train_lib.NonFiniteError, match="3 updates were skipped"):
    train_lib.run(config, str(tmp_path))
  records = metrics_log.read(str(tmp_path / "metrics.jsonl"))
  assert [r["skipped"] for r in records] == [1.0, 1.0]  # steps 1-2 logged; step 3 raised
  assert all(r["finite"] == 0.0 for r in records)


def test_different_seeds_differ_and_the_same_seed_repeats_bitwise(tmp_path):
  fingerprints, records = {}, {}
  for name, seed in (("first", 0), ("other_seed", 1), ("same_seed", 0)):
    workdir = tmp_path / name
    fingerprints[name] = train_lib.run(tiny_config(seed), str(workdir))["fingerprint"]
    records[name] = [{k: v for k, v in record.items() if k != "wall_s"}
                     for record in metrics_log.read(str(workdir / "metrics.jsonl"))]
  assert fingerprints["same_seed"] == fingerprints["first"]
  assert records["same_seed"] == records["first"]  # every logged loss and accuracy too
  assert fingerprints["other_seed"] != fingerprints["first"]
  assert records["other_seed"][0]["meta_loss"] != records["first"][0]["meta_loss"]
