"""Data parallelism on 8 simulated CPU devices: the sharded step equals the single-device step.

XLA reads `--xla_force_host_platform_device_count` once, when the CPU backend starts, and pytest
runs every test module in one process whose backend has long started with 1 device. So the
8-device checks run in a fresh interpreter: `test_sharded_update_equals_single_device` runs this
very file as a script with the flag set before jax is imported (`python tests/parallel_test.py`
does the same by hand) and asserts on the JSON report it prints.
"""
import os
import sys

NUM_DEVICES = 8

if __name__ == "__main__":  # before jax is imported
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                      f"--xla_force_host_platform_device_count={NUM_DEVICES}"])
  os.environ["JAX_PLATFORMS"] = "cpu"

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta import inner
from jmeta import meta
from jmeta import classifiers
from jmeta import evaluate
from jmeta import parallel
from jmeta import testing
from jmeta import tasks as tasks_lib
from jmeta import train
from jmeta.data.dataset import Dataset

_REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# The 8-device report (runs in the child process).


def _difference(actual, desired, *, rtol=1e-5, atol=1e-6):
  """(every leaf allclose, max |a − d|). float32 leaves (e.g. accuracies, a mean of booleans,
  even under x64) get at least float32 tolerances."""
  close, largest = True, 0.0
  for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
    a, d = np.asarray(a), np.asarray(d)
    leaf_rtol, leaf_atol = ((rtol, atol) if a.dtype == np.float64
                            else (max(rtol, 1e-5), max(atol, 1e-6)))
    a, d = a.astype(np.float64), d.astype(np.float64)
    close = close and np.allclose(a, d, rtol=leaf_rtol, atol=leaf_atol)
    largest = max(largest, float(np.max(np.abs(a - d))))
  return close, largest


def _raises(fn, *args, **kwargs) -> str:
  try:
    fn(*args, **kwargs)
  except ValueError as error:
    return str(error)
  return ""


def _compare_updates(objective, meta_params, *, num_tasks, task_chunk_size, image_shape,
                     rtol=1e-5, atol=1e-6):
  """Two steps with mesh=make_mesh(8) and with mesh=None, from the same state and key."""
  mesh = parallel.make_mesh(NUM_DEVICES)
  # Plain SGD: Adam would blow float noise in zero-gradient leaves (e.g. conv biases before
  # batch norm, with conv_bias=True) up to ±learning rate, hiding what is compared.
  optimizer = optax.sgd(0.3)
  sample = testing.task_sampler(num_tasks=num_tasks, num_ways=3)
  data = testing.fake_images(jax.random.key(1), num_images=12, image_shape=image_shape)
  data = data.astype(jax.tree.leaves(meta_params)[0].dtype)
  key = jax.random.key(2)
  results, hlo = {}, ""
  for name, use_mesh in (("sharded", mesh), ("single", None)):
    update = train.make_update(objective, optimizer, sample_tasks=sample, num_tasks=num_tasks,
                               task_chunk_size=task_chunk_size, mesh=use_mesh)
    state = train.init_state(jax.tree.map(jnp.copy, meta_params), optimizer)
    if use_mesh is not None:
      state = parallel.replicate(state, mesh)
      hlo = update.lower(state, key, data).compile().as_text()
    history = []
    for _ in range(2):
      state, metrics = update(state, key, data)
      history.append(jax.device_get(metrics))
    results[name] = (jax.device_get(state.meta_params), history,
                     len(jax.tree.leaves(state.meta_params)[0].sharding.device_set))
  (sharded, sharded_metrics, devices), (single, single_metrics, _) = (results["sharded"],
                                                                       results["single"])
  return {
      "params": _difference(sharded, single, rtol=rtol, atol=atol),
      "metrics": _difference(sharded_metrics, single_metrics, rtol=rtol, atol=atol),
      "loss": [float(m["meta_loss"]) for m in single_metrics],
      "params_moved": _difference(single, meta_params)[1],
      "state_devices": devices,
      "all_reduce_in_hlo": "all-reduce" in hlo,
      "all_gather_in_hlo": "all-gather" in hlo,
  }


def report() -> dict:
  """Every 8-device check, as JSON-serialisable values."""
  out = {"num_devices": jax.device_count()}
  out["too_many_devices"] = _raises(parallel.make_mesh, NUM_DEVICES + 1)
  out["zero_devices"] = _raises(parallel.make_mesh, 0)
  out["default_mesh_shape"] = dict(parallel.make_mesh().shape)
  out["mesh2_shape"] = dict(parallel.make_mesh(2).shape)

  # Placement helpers.
  mesh = parallel.make_mesh(NUM_DEVICES)
  replicated = parallel.replicate({"w": jnp.arange(6.0)}, mesh)["w"]
  out["replicated"] = [len(replicated.sharding.device_set), replicated.sharding.is_fully_replicated]
  tasks = testing.fake_tasks(jax.random.key(0), num_tasks=16, image_shape=(4, 4, 1))
  sharded = jax.device_put(tasks, parallel.task_sharding(mesh)).support
  out["task_shard_rows"] = sorted({s.data.shape[0] for s in sharded.addressable_shards})
  out["task_shard_devices"] = len(sharded.sharding.device_set)
  if hasattr(parallel, "shard_pool"):
    pool = parallel.shard_pool(np.zeros((20, 4, 4, 1), np.float32), mesh)
    out["pool_shape"] = list(pool.shape)
    out["pool_shard_rows"] = sorted({s.data.shape[0] for s in pool.addressable_shards})
    out["pool_too_small"] = _raises(parallel.shard_pool, np.zeros((5, 4, 4, 1)), mesh)

  # num_tasks must split evenly over the devices.
  mlp = testing.mlp(input_shape=(4, 4, 1), hidden_dim=6, output_dim=5)
  protonet = meta.protonet(mlp.apply, num_ways=3)
  out["indivisible_tasks"] = _raises(train.make_update, protonet, optax.sgd(0.1),
                                     sample_tasks=testing.task_sampler(num_tasks=4),
                                     num_tasks=4, mesh=mesh)

  # BMSSL on the tiny conv (transductive batch norm), one task per device, in float64: the
  # second-order objective amplifies float32 rounding (a different reduction order on 8
  # devices) to ~1e-5 by the second step, and float64 shows the steps agree to ~1e-12.
  with jax.enable_x64(True):
    conv = testing.tiny_conv()
    adapter, objective = meta.bmssl(conv.apply, num_ways=3, step_size=0.3, num_inner_steps=1,
                                    num_bootstrap_steps=1, mix=0.5)
    meta_params = testing.to_float64(
        adapter.init_meta({"encoder": conv.init(jax.random.key(3))}))
    out["bmssl_conv_float64"] = _compare_updates(
        objective, meta_params, num_tasks=8, task_chunk_size=None, image_shape=(8, 8, 1),
        rtol=1e-9, atol=1e-12)

  # MAML on an MLP, two tasks per device processed in chunks of one.
  adapter = inner.head(mlp.apply, step_size=0.3)
  objective = meta.maml(adapter, classifiers.linear_head(mlp.apply), num_inner_steps=1)
  params = {"encoder": mlp.init(jax.random.key(4)),
            "head": inner.init_head(jax.random.key(5), mlp.embedding_dim, 3)}
  out["maml_chunked"] = _compare_updates(objective, adapter.init_meta(params), num_tasks=16,
                                         task_chunk_size=1, image_shape=(4, 4, 1))
  out["evaluation"] = _compare_evaluation()
  return out


def _compare_evaluation() -> dict:
  """Few-shot accuracies with each batch split over 8 devices and on one device."""
  conv = testing.tiny_conv()
  conv_params = conv.init(jax.random.key(6))
  labels = np.repeat(np.arange(10, dtype=np.int32), 6)
  images = np.asarray(testing.fake_images(jax.random.key(7), num_images=labels.size) * 255,
                      np.uint8)
  dataset = Dataset(images, labels, tuple(map(str, range(10))))
  kwargs = dict(num_ways=3, num_shots=1, num_queries=2, num_episodes=21, batch_size=16,
                progress=False, params=conv_params)
  sharded = evaluate.few_shot(conv.apply, dataset, **kwargs)
  single = evaluate.few_shot(conv.apply, dataset, devices=jax.devices()[:1], **kwargs)
  batch_fn = evaluate.make_batch_accuracy(
      evaluate.prototype_classifier(conv.apply, num_ways=3, takes_params=True), num_ways=3,
      num_shots=1, num_queries=2, seed=0, batch_size=16, takes_params=True)
  output = batch_fn(tasks_lib.labeled_pool(dataset), jnp.int32(0), conv_params)
  return {"sharded": sharded.accuracies.tolist(), "single": single.accuracies.tolist(),
          "output_devices": len(output.sharding.device_set)}


# ------------------------------------------------------------------------------------------------
# Tests (run in pytest's process).


def test_sharded_update_equals_single_device():
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(_REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  completed = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                             timeout=600, check=False)
  assert completed.returncode == 0, completed.stderr[-5000:]
  out = json.loads(completed.stdout.strip().splitlines()[-1])

  assert out["num_devices"] == NUM_DEVICES
  assert f"num_devices={NUM_DEVICES + 1}" in out["too_many_devices"]
  assert "num_devices=0" in out["zero_devices"]
  assert out["default_mesh_shape"] == {parallel.DATA_AXIS: NUM_DEVICES}
  assert out["mesh2_shape"] == {parallel.DATA_AXIS: 2}
  assert out["replicated"] == [NUM_DEVICES, True]
  assert out["task_shard_rows"] == [16 // NUM_DEVICES]
  assert out["task_shard_devices"] == NUM_DEVICES
  if "pool_shape" in out:
    assert out["pool_shape"] == [NUM_DEVICES, 2, 4, 4, 1]
    assert out["pool_shard_rows"] == [1]
    assert "5 images" in out["pool_too_small"]
  assert "num_tasks=4" in out["indivisible_tasks"]
  for name in ("bmssl_conv_float64", "maml_chunked"):
    result = out[name]
    assert result["params"][0], (name, "sharded params differ", result)
    assert result["metrics"][0], (name, "sharded metrics differ", result)
    assert result["params_moved"] > 1e-4, (name, result)  # the step did something
    assert all(np.isfinite(result["loss"])), (name, result)
    assert result["state_devices"] == NUM_DEVICES, (name, result)
    assert result["all_reduce_in_hlo"], (name, "the sharded step never reduces across devices")
    # Gathering the tasks would mean every device adapts every task: no data parallelism.
    assert not result["all_gather_in_hlo"], (name, "the sharded step gathers the tasks")
  evaluation = out["evaluation"]
  assert len(evaluation["sharded"]) == 21 and len(set(evaluation["sharded"])) > 1, evaluation
  assert evaluation["sharded"] == evaluation["single"], evaluation
  assert evaluation["output_devices"] == NUM_DEVICES, evaluation  # episodes really split


def test_make_mesh_rejects_more_devices_than_present():
  too_many = jax.device_count() + 1
  with pytest.raises(ValueError, match=f"num_devices={too_many}"):
    parallel.make_mesh(too_many)
  with pytest.raises(ValueError, match="num_devices=0"):
    parallel.make_mesh(0)


def test_single_device_mesh_gives_the_unsharded_step():
  mlp = testing.mlp(input_shape=(4, 4, 1), hidden_dim=6, output_dim=5)
  objective = meta.protonet(mlp.apply, num_ways=3)
  meta_params = {"params": {"encoder": mlp.init(jax.random.key(0))}}
  optimizer = optax.sgd(0.1)
  sample = testing.task_sampler(num_tasks=2)
  data = testing.fake_images(jax.random.key(1), num_images=8, image_shape=(4, 4, 1))
  states = []
  for mesh in (parallel.make_mesh(1), None):
    update = train.make_update(objective, optimizer, sample_tasks=sample, num_tasks=2, mesh=mesh)
    state = train.init_state(jax.tree.map(jnp.copy, meta_params), optimizer)
    states.append(update(state, jax.random.key(2), data)[0])
  testing.assert_trees_allclose(states[0].meta_params, states[1].meta_params, rtol=1e-6)


if __name__ == "__main__":
  print(json.dumps(report()))
