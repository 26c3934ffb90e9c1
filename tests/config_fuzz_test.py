"""Property-based tests (hypothesis) of the config checks, on the real Omniglot data.

Invalid values of many fields, alone or in combinations, make `experiments.train.run` raise a
ConfigError naming the field before anything is compiled; small valid combinations train a step.
"""
import importlib
import math
import tempfile

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest

from configs import common
from experiments import config_checks
from experiments import factories
from experiments import train as train_lib
from jmeta.data import omniglot
from jmeta.models import layers

CONFIGS = ["bmssl_omniglot", "umtra_omniglot", "simclr_omniglot", "maml_omniglot",
           "protonet_omniglot"]
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def smoke_config(name):
  return importlib.import_module(f"configs.{name}").get_config("smoke")


def apply(config, overrides):
  for path, value in overrides.items():
    *parents, field = path.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[field] = value
  return config


# ------------------------------------------------------------------------------------------------
# Fixtures: module-scoped, because hypothesis runs many examples per test function.

@pytest.fixture(scope="module")
def run_env(data_dir, cache_dir, tmp_path_factory):
  """`run(config) -> metrics` in a fresh workdir; loaded datasets are reused across examples.

  Loading is a pure function of its arguments, and the examples would otherwise spend their
  time decoding the same splits again.
  """
  del cache_dir  # sets $JMETA_CACHE_DIR for the session
  load = factories.load_dataset
  loaded = {}

  def load_once(data_config, split, *, rotations):
    key = (data_config.source, data_config.data_dir, data_config.image_size, split, rotations)
    if key not in loaded:
      loaded[key] = load(data_config, split, rotations=rotations)
    return loaded[key]

  workdirs = tmp_path_factory.mktemp("fuzz_runs")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JMETA_DATA_DIR", str(data_dir))
    patch.setattr(factories, "load_dataset", load_once)
    yield lambda config: train_lib.run(config, tempfile.mkdtemp(dir=workdirs))


@pytest.fixture(scope="module")
def compiles():
  """The XLA compilations since the list was last cleared."""
  events = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == COMPILE_EVENT:
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield events
  jax.monitoring.unregister_event_duration_listener(listener)


# ------------------------------------------------------------------------------------------------
# Invalid values: each strategy draws `(overrides, field)`, the field the error must name.

def _not_finite():
  return st.sampled_from([math.nan, math.inf, -math.inf])


def _below(limit, *, strict):
  """Floats < limit (<= limit if not strict), or non-finite."""
  return st.floats(max_value=limit, exclude_max=strict, allow_nan=False,
                   allow_infinity=False) | _not_finite()


def _outside(low, high, *, high_open=False):
  return (st.floats(max_value=low, exclude_max=True, allow_infinity=False, allow_nan=False)
          | st.floats(min_value=high, exclude_min=not high_open, allow_infinity=False,
                      allow_nan=False)
          | _not_finite())


def _bad_pair(low, high):
  """(min, max) pairs with min > max, or an end outside [low, high], or NaN."""
  inside = st.floats(low, high)
  return (st.tuples(inside, inside).filter(lambda p: p[0] != p[1]).map(
              lambda p: (max(p), min(p)))
          | st.tuples(_outside(low, high), inside)
          | st.tuples(inside, _outside(low, high))
          | st.tuples(_outside(low, high), _outside(low, high)))


def _not_in(allowed):
  return st.text(max_size=12).filter(lambda s: s not in allowed)


POSITIVE_INTS = ["num_steps", "data.image_size", "model.width", "model.num_blocks",
                 "tasks.num_tasks", "tasks.num_ways", "tasks.num_support", "tasks.num_queries",
                 "optimizer.max_skipped", "eval.every_steps", "eval.num_ways", "eval.num_shots",
                 "eval.num_queries", "eval.num_episodes", "eval.batch_size", "log_every_steps",
                 "checkpoint_every_steps", "keep_checkpoints"]
NONNEGATIVE_INTS = ["num_devices", "task_chunk_size", "data.max_train_images", "inner.num_steps",
                    "meta.num_bootstrap_steps", "optimizer.warmup_steps"]
POSITIVE_FLOATS = ["inner.step_size", "inner.temperature", "meta.temperature",
                   "optimizer.learning_rate", "augment.elastic_smoothness"]
NONNEGATIVE_FLOATS = ["optimizer.gradient_clip"]
PROBABILITIES = ["augment.flip_probability", "augment.erasing_probability", "meta.mix"]
CHOICES = {
    "model.name": factories.MODELS, "model.norm": layers.NORM_MODES,
    "model.conv_impl": layers.CONV_IMPLS, "tasks.labels": factories.TASK_LABELS,
    "inner.adapter": factories.ADAPTERS, "meta.objective": factories.OBJECTIVES,
    "meta.classifier": factories.CLASSIFIERS, "meta.matching": ("kl", "l2"),
    "optimizer.schedule": ("cosine", "constant"), "optimizer.nonfinite": ("skip", "stop"),
    "data.train_split": omniglot.SPLITS, "data.eval_split": omniglot.SPLITS,
}


# Bad values of one field at a time: wrong sign, zero, out of range, non-finite, unknown names.
BAD_VALUES = {
    **{f: st.integers(max_value=0) for f in POSITIVE_INTS},
    **{f: st.integers(max_value=-1) for f in NONNEGATIVE_INTS},
    **{f: _below(0.0, strict=False) for f in POSITIVE_FLOATS},
    **{f: _below(0.0, strict=True) for f in NONNEGATIVE_FLOATS},
    **{f: _outside(0.0, 1.0) for f in PROBABILITIES},
    **{f: _not_in(allowed) for f, allowed in CHOICES.items()},
    "data.source": _not_in(("omniglot", "mnist", "digits")).filter(
        lambda s: not s.startswith("tfds:")),
    "augment.crop_scale": _bad_pair(0.01, 1.0),
    "augment.affine_scale": _bad_pair(0.01, 10.0),
    "augment.affine_degrees": _outside(0.0, 180.0),
    "augment.affine_shear": _outside(0.0, 90.0, high_open=True),
    "augment.affine_translate": _outside(0.0, 1.0),
    "augment.elastic_magnitude": _outside(0.0, 100.0),
    # JAX's default 32-bit keys fold other seeds onto these: seed 2**32 would train like 0.
    "seed": st.integers(max_value=-1) | st.integers(min_value=2**32),
    "eval.seed": st.integers(max_value=-1) | st.integers(min_value=2**32),
}


@st.composite
def single_field_values(draw):
  field = draw(st.sampled_from(sorted(BAD_VALUES)))
  return {field: draw(BAD_VALUES[field])}, field


@st.composite
def invalid_combinations(draw):
  """Values each valid alone that clash with another field, with the data, or the model."""
  case = draw(st.sampled_from([
      "contrastive_one_support", "bootstrap_without_adapter", "no_inner_loop_with_adapter",
      "head_classifier_without_head", "bmg_without_bootstrap", "tasks_not_divisible_by_chunk",
      "image_too_small_for_conv4", "image_too_small_for_resnet12", "group_norm_width",
      "adapt_matches_nothing", "more_ways_than_classes", "more_ways_than_images",
      "class_too_small", "more_eval_ways_than_classes", "eval_class_too_small",
      "more_devices_than_present", "rotations_without_omniglot"]))
  bootstrap = {"meta.objective": "bootstrap", "meta.classifier": "prototype"}
  if case == "contrastive_one_support":
    return dict(bootstrap, **{"inner.adapter": "contrastive", "tasks.num_support": 1}), \
        "tasks.num_support"
  if case == "bootstrap_without_adapter":
    return dict(bootstrap, **{"inner.adapter": "none"}), "inner.adapter"
  if case == "no_inner_loop_with_adapter":
    # protonet and simclr have no inner loop: an adapter would be silently ignored.
    return {"meta.objective": draw(st.sampled_from(["protonet", "simclr"])),
            "inner.adapter": draw(st.sampled_from(["contrastive", "prototype", "head",
                                                   "zero_head"]))}, "inner.adapter"
  if case == "head_classifier_without_head":
    return dict(bootstrap, **{"meta.classifier": "head", "tasks.num_support": 2,
                              "inner.adapter": draw(st.sampled_from(["contrastive",
                                                                     "prototype"]))}), \
        "meta.classifier"
  if case == "bmg_without_bootstrap":
    return {"meta.bmg_query_step": True, "meta.num_bootstrap_steps": 0}, "meta.bmg_query_step"
  if case == "rotations_without_omniglot":
    return {"data.source": draw(st.sampled_from(["mnist", "digits", "tfds:mnist"])),
            "data.train_rotations": True}, "data.train_rotations"
  if case == "tasks_not_divisible_by_chunk":
    chunk = draw(st.integers(2, 8))
    tasks = chunk * draw(st.integers(0, 8)) + draw(st.integers(1, chunk - 1))
    return {"tasks.num_tasks": tasks, "task_chunk_size": chunk}, "task_chunk_size"
  if case == "image_too_small_for_conv4":
    blocks = draw(st.integers(1, 40))
    size = draw(st.integers(1, min(2**min(blocks, 5) - 1, 27)))
    return {"model.name": "conv4", "model.num_blocks": blocks, "data.image_size": size}, \
        "data.image_size"
  if case == "image_too_small_for_resnet12":
    return {"model.name": "resnet12", "data.image_size": draw(st.integers(1, 15))}, \
        "data.image_size"
  if case == "group_norm_width":
    width = 8 * draw(st.integers(0, 25)) + draw(st.integers(1, 7))
    return {"model.norm": "group", "model.width": width}, "model.width"
  if case == "adapt_matches_nothing":
    prefix = draw(st.sampled_from(["encoder/block9", "head", "decoder", "", " , ",
                                   "encoder/block0/nothing"]))
    return dict(bootstrap, **{"inner.adapter": "contrastive", "tasks.num_support": 2,
                              "inner.adapt": prefix}), "inner.adapt"
  if case == "more_ways_than_classes":
    # The first 200 unrotated training images are 10 classes of 20.
    return {"tasks.labels": "true", "data.train_rotations": False,
            "data.max_train_images": 200, "tasks.num_ways": draw(st.integers(11, 10**6))}, \
        "tasks.num_ways"
  if case == "more_ways_than_images":
    images = draw(st.integers(1, 300))
    return {"tasks.labels": "none", "data.max_train_images": images,
            "tasks.num_ways": draw(st.integers(images + 1, 10**6))}, "tasks.num_ways"
  if case == "class_too_small":
    support = draw(st.integers(2, 30))
    return {"tasks.labels": "true", "tasks.num_ways": 2, "tasks.num_support": support,
            "tasks.num_queries": draw(st.integers(max(1, 21 - support), 40))}, \
        "tasks.num_support"
  if case == "more_eval_ways_than_classes":
    return {"eval.num_ways": draw(st.integers(689, 10**6))}, "eval.num_ways"  # 688 in val
  if case == "more_devices_than_present":
    return {"num_devices": draw(st.integers(min_value=jax.device_count() + 1))}, "num_devices"
  assert case == "eval_class_too_small"
  shots = draw(st.integers(1, 30))
  return {"eval.num_shots": shots,
          "eval.num_queries": draw(st.integers(max(1, 21 - shots), 40))}, "eval.num_shots"


class PassedTheChecks(Exception):
  """The run got past every check to putting the training data on devices."""


def _passed_the_checks(*args, **kwargs):
  del args, kwargs
  raise PassedTheChecks("the config passed check_static and check_data")


@hypothesis.settings(max_examples=150, deadline=None, database=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(name=st.sampled_from(CONFIGS),
                  case=single_field_values() | invalid_combinations())
def test_invalid_config_raises_config_error_naming_the_field_before_compiling(
    name, case, run_env, compiles):
  overrides, field = case
  config = apply(smoke_config(name), overrides)
  compiles.clear()
  # A config that gets past the checks fails here at once instead of training a bad run.
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(factories, "training_data", _passed_the_checks)
    with pytest.raises(config_checks.ConfigError) as raised:
      run_env(config)
  assert field in str(raised.value)
  assert not compiles


# ------------------------------------------------------------------------------------------------
# Valid small combinations: one real training step each.

@st.composite
def small_valid_overrides(draw):
  labels = draw(st.sampled_from(factories.TASK_LABELS))
  algorithm = draw(st.sampled_from(["contrastive", "prototype", "head", "zero_head",
                                    "protonet", "simclr"]))
  num_tasks = draw(st.integers(1, 2))
  overrides = {
      "tasks.labels": labels,
      "tasks.num_ways": draw(st.integers(2, 5)),
      "tasks.num_support": draw(st.integers(2 if algorithm == "contrastive" else 1, 3)),
      "tasks.num_queries": draw(st.integers(1, 3)),
      "tasks.num_tasks": num_tasks,
      "task_chunk_size": draw(st.sampled_from([0] + [c for c in (1, 2) if num_tasks % c == 0])),
      "augment.flip_probability": draw(st.sampled_from([0.0, 0.5])),
      "optimizer.schedule": draw(st.sampled_from(["cosine", "constant"])),
  }
  if algorithm in ("protonet", "simclr"):
    overrides.update({"meta.objective": algorithm, "inner.adapter": "none",
                      "inner.num_steps": 0, "meta.num_bootstrap_steps": 0,
                      "meta.bmg_query_step": False})
    return overrides
  bootstrap_steps = draw(st.integers(0, 2))
  overrides.update({
      "meta.objective": "bootstrap", "inner.adapter": algorithm,
      "meta.classifier": draw(st.sampled_from(
          ["prototype", "head"] if algorithm in ("head", "zero_head") else ["prototype"])),
      "inner.num_steps": draw(st.integers(0, 2)),
      "inner.first_order": draw(st.booleans()),
      "inner.learn_step_sizes": draw(st.booleans()),
      "meta.num_bootstrap_steps": bootstrap_steps,
      "meta.mix": draw(st.sampled_from([0.0, 0.5, 1.0])),
      "meta.matching": draw(st.sampled_from(["kl", "l2"])),
      "meta.bmg_query_step": bootstrap_steps > 0 and draw(st.booleans()),
  })
  return overrides


@hypothesis.settings(max_examples=5, deadline=None, database=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(overrides=small_valid_overrides(), seed=st.integers(0, 2**32 - 1))
def test_small_valid_config_trains_one_step(overrides, seed, run_env):
  # One conv block on unaugmented 28×28 images: compiling dominates, and this keeps it ~5 s.
  config = common.disable_augmentation(smoke_config("bmssl_omniglot"))
  config.model.num_blocks = 1
  config.num_steps = 1
  config.seed = seed
  metrics = run_env(apply(config, overrides))
  assert metrics["step"] == 1
  assert metrics["finite"] == 1.0
  assert np.isfinite(metrics["meta_loss"])
  assert len(metrics["fingerprint"]) == 64
