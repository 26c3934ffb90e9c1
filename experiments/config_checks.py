"""Configuration checks that run before anything is compiled.

Every error names the offending field and what is allowed, so a bad launch fails in a second
instead of minutes into compilation (or, worse, trains something else silently).
"""
import math

import jax

from experiments import factories
from jmeta.data import omniglot
from jmeta.models import layers
from jmeta.models import resnet12

# The models' default num_groups for norm="group" (factories.build_model does not set it).
_NUM_GROUPS = 8


class ConfigError(ValueError):
  """A configuration field has a value the trainer cannot honour."""


def _choice(name, value, allowed):
  if value not in allowed:
    raise ConfigError(f"{name}={value!r} is not supported; allowed values: {tuple(allowed)}.")


def _positive(name, value, *, strict=True):
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f"{name}={value!r} must be a number.")
  if isinstance(value, float) and not math.isfinite(value):
    raise ConfigError(f"{name}={value!r} must be a finite number.")
  if value < 0 or (strict and value == 0):
    raise ConfigError(f"{name}={value!r} must be {'> 0' if strict else '>= 0'}.")


def _within(name, value, *, low, high, high_open=False):
  if not (low <= value < high if high_open else low <= value <= high):  # NaN fails both
    raise ConfigError(f"{name}={value!r} must be in [{low}, {high}{')' if high_open else ']'}.")


def _seed(name, value):
  # JAX's default keys use the low 32 bits of the seed (seed 2**32 would run exactly as seed 0,
  # -1 as 2**32 - 1), and seeds >= 2**63 overflow when the key is made.
  if not 0 <= value < 2**32:
    raise ConfigError(f"{name}={value!r} must be in [0, 2**32): JAX keys keep only the low "
                      "32 bits, so other seeds repeat runs of seeds in that range.")


def _pair(name, value, *, low, high):
  if len(value) != 2 or not low <= value[0] <= value[1] <= high:
    raise ConfigError(f"{name}={tuple(value)!r} must be (min, max) with {low} <= min <= max "
                      f"<= {high}.")


def check_static(config) -> None:
  """Checks every field that does not need the data."""
  _seed("seed", config.seed)
  _positive("num_steps", config.num_steps)
  _positive("num_devices", config.num_devices, strict=False)
  _positive("task_chunk_size", config.task_chunk_size, strict=False)
  source = config.data.source
  if not (source in ("omniglot", "mnist", "digits") or source.startswith("tfds:")):
    raise ConfigError(f"data.source={source!r} is not supported; allowed values: "
                      f"{factories.SOURCES}.")
  if source == "omniglot":
    for field in ("train_split", "eval_split"):
      _choice(f"data.{field}", config.data[field], omniglot.SPLITS)
  elif config.data.train_rotations:
    # Only Omniglot's loader can add rotated copies; elsewhere the run would silently train on
    # the unrotated images. (eval_rotations defaults to True, so it cannot be refused the same
    # way; its comment in configs/common.py says other sources ignore it.)
    raise ConfigError(f"data.train_rotations=True needs data.source='omniglot' (got "
                      f"{source!r}); set data.train_rotations=False.")
  _positive("data.image_size", config.data.image_size)
  _positive("data.max_train_images", config.data.max_train_images, strict=False)
  _choice("model.name", config.model.name, factories.MODELS)
  _choice("model.norm", config.model.norm, layers.NORM_MODES)
  _choice("model.conv_impl", config.model.conv_impl, layers.CONV_IMPLS)
  _positive("model.width", config.model.width)
  _positive("model.num_blocks", config.model.num_blocks)
  if config.model.conv_bias is not None and config.model.name != "conv4":
    raise ConfigError(f"model.conv_bias applies to model.name='conv4' only (got "
                      f"{config.model.name!r}, whose convolutions have no bias); leave it unset.")
  _check_model_fits(config)
  _choice("tasks.labels", config.tasks.labels, factories.TASK_LABELS)
  for field in ("num_tasks", "num_ways", "num_support", "num_queries"):
    _positive(f"tasks.{field}", config.tasks[field])
  _pair("augment.crop_scale", config.augment.crop_scale, low=0.01, high=1.0)
  _pair("augment.affine_scale", config.augment.affine_scale, low=0.01, high=10.0)
  for field in ("flip_probability", "erasing_probability"):
    _within(f"augment.{field}", config.augment[field], low=0, high=1)
  # The ranges jmeta.augment.random_affine accepts.
  _within("augment.affine_degrees", config.augment.affine_degrees, low=0, high=180)
  _within("augment.affine_shear", config.augment.affine_shear, low=0, high=90, high_open=True)
  _within("augment.affine_translate", config.augment.affine_translate, low=0, high=1)
  _within("augment.elastic_magnitude", config.augment.elastic_magnitude, low=0, high=100)
  _positive("augment.elastic_smoothness", config.augment.elastic_smoothness)
  _choice("inner.adapter", config.inner.adapter, factories.ADAPTERS)
  _positive("inner.step_size", config.inner.step_size)
  _positive("inner.num_steps", config.inner.num_steps, strict=False)
  _positive("inner.temperature", config.inner.temperature)
  _choice("meta.objective", config.meta.objective, factories.OBJECTIVES)
  _choice("meta.classifier", config.meta.classifier, factories.CLASSIFIERS)
  _choice("meta.matching", config.meta.matching, ("kl", "l2"))
  _positive("meta.temperature", config.meta.temperature)
  _positive("meta.num_bootstrap_steps", config.meta.num_bootstrap_steps, strict=False)
  if not 0 <= config.meta.mix <= 1:
    raise ConfigError(f"meta.mix={config.meta.mix!r} (λ) must be in [0, 1].")
  if config.meta.bmg_query_step and config.meta.num_bootstrap_steps < 1:
    raise ConfigError("meta.bmg_query_step=True needs meta.num_bootstrap_steps >= 1 (the query "
                      "step is the last bootstrap step); without a bootstrap (δ = 0) set "
                      "meta.bmg_query_step=False.")
  if config.meta.objective == "bootstrap":
    if config.inner.adapter == "none":
      raise ConfigError("inner.adapter='none' needs meta.objective 'protonet' or 'simclr'; "
                        "the bootstrap objective adapts.")
    if config.inner.adapter == "contrastive" and config.tasks.num_support < 2:
      raise ConfigError(f"tasks.num_support={config.tasks.num_support}: the contrastive inner "
                        "loss needs >= 2 support views per class (positives); allowed: >= 2.")
    if config.meta.classifier == "head" and config.inner.adapter not in ("head", "zero_head"):
      raise ConfigError("meta.classifier='head' needs inner.adapter 'head' or 'zero_head'.")
  elif config.inner.adapter != "none":
    # protonet and simclr have no inner loop: the adapter would be silently ignored.
    raise ConfigError(f"inner.adapter={config.inner.adapter!r} is ignored by meta.objective="
                      f"{config.meta.objective!r}, which does not adapt; allowed: 'none'.")
  _positive("optimizer.learning_rate", config.optimizer.learning_rate)
  _choice("optimizer.schedule", config.optimizer.schedule, ("cosine", "constant"))
  _positive("optimizer.warmup_steps", config.optimizer.warmup_steps, strict=False)
  _positive("optimizer.gradient_clip", config.optimizer.gradient_clip, strict=False)
  _choice("optimizer.nonfinite", config.optimizer.nonfinite, ("skip", "stop"))
  _positive("optimizer.max_skipped", config.optimizer.max_skipped)
  _seed("eval.seed", config.eval.seed)
  for field in ("every_steps", "num_ways", "num_shots", "num_queries", "num_episodes",
                "batch_size"):
    _positive(f"eval.{field}", config.eval[field])
  for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    _positive(field, config[field])
  devices = jax.device_count()
  if config.num_devices > devices:
    raise ConfigError(f"num_devices={config.num_devices} but only {devices} devices are "
                      f"present; allowed: 0 (all) to {devices}.")
  used = config.num_devices or devices
  if config.tasks.num_tasks % used:
    raise ConfigError(f"tasks.num_tasks={config.tasks.num_tasks} must be a multiple of the "
                      f"{used} devices used (num_devices).")
  chunk = config.task_chunk_size
  if chunk and (config.tasks.num_tasks // used) % chunk:
    raise ConfigError(f"task_chunk_size={chunk} must divide the {config.tasks.num_tasks // used} "
                      "tasks per device.")
  if config.meta.objective == "bootstrap":
    _check_adapt(config)


def _check_model_fits(config) -> None:
  """The image size and width the model needs (its own ValueErrors come only after loading)."""
  model, size = config.model, config.data.image_size
  if model.name == "conv4" and size >> model.num_blocks < 1:
    raise ConfigError(f"data.image_size={size} is too small for model.num_blocks="
                      f"{model.num_blocks}: conv4 halves it in every block; allowed: >= "
                      f"2**{model.num_blocks}.")
  if model.name == "resnet12" and size < 16:
    raise ConfigError(f"data.image_size={size} is too small for model.name='resnet12' (four "
                      "2×2 poolings); allowed: >= 16.")
  if model.norm == "group":
    widths = ([model.width] if model.name == "conv4" else
              [int(round(model.width * m)) for m in resnet12.WIDTH_MULTIPLIERS])
    if any(width % _NUM_GROUPS for width in widths):
      raise ConfigError(f"model.width={model.width} gives block widths {widths}; "
                        f"model.norm='group' needs each to be a multiple of {_NUM_GROUPS}.")


def _check_adapt(config) -> None:
  """inner.adapt must name fast weights the inner loop has ("" would silently adapt nothing).

  The paths come from tracing the model's and adapter's init with abstract shapes: nothing is
  computed or compiled.
  """
  adapt = config.inner.adapt
  if adapt == "all":
    return
  prefixes = [part.strip() for part in adapt.split(",") if part.strip()]
  if not prefixes:
    raise ConfigError(f"inner.adapt={adapt!r} names no parameter; allowed: 'all' or "
                      "comma-separated parameter path prefixes like 'encoder/block3,head'.")
  model = factories.build_model(config.model, image_size=config.data.image_size, channels=1)
  adapter, _ = factories.build_objective(config, model)
  fast_weights = jax.eval_shape(lambda: adapter.init(adapter.init_meta(
      factories.build_meta_params(config, model, jax.random.key(0)))).params)
  paths = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(fast_weights)[0]]
  unmatched = [prefix for prefix in prefixes
               if not any(path == prefix or path.startswith(prefix + "/") for path in paths)]
  if unmatched:
    raise ConfigError(f"inner.adapt={adapt!r}: {unmatched} match no parameter; the inner loop's "
                      f"parameter paths are {paths}.")


def check_data(config, train, evaluation, *, num_shards: int = 1) -> None:
  """Checks the task settings against the loaded datasets (still before compiling).

  Unsupervised tasks draw their N images from one device's shard of the pool.
  """
  task_config = config.tasks
  if task_config.labels == "none":
    per_shard = len(train.images) // num_shards
    if task_config.num_ways > per_shard:
      raise ConfigError(f"tasks.num_ways={task_config.num_ways} exceeds the {per_shard} "
                        f"training images per device of {config.data.train_split!r} "
                        f"({len(train.images)} images over {num_shards} devices).")
  else:
    if task_config.num_ways > train.num_classes:
      raise ConfigError(f"tasks.num_ways={task_config.num_ways} exceeds the {train.num_classes} "
                        f"classes of {config.data.train_split!r}.")
    _class_sizes("tasks.num_support + tasks.num_queries",
                 task_config.num_support + task_config.num_queries, train)
  if config.eval.num_ways > evaluation.num_classes:
    raise ConfigError(f"eval.num_ways={config.eval.num_ways} exceeds the "
                      f"{evaluation.num_classes} classes of {config.data.eval_split!r}.")
  _class_sizes("eval.num_shots + eval.num_queries",
               config.eval.num_shots + config.eval.num_queries, evaluation)


def _class_sizes(field, needed, dataset):
  import numpy as np
  counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
  smallest = int(counts.argmin())
  if counts[smallest] < needed:
    raise ConfigError(f"{field}={needed} exceeds the {counts[smallest]} images of class "
                      f"{dataset.class_names[smallest]!r}.")


def check_same_across_processes(config) -> None:
  """Every process of a multi-host job must run the same config (compared by hash)."""
  import hashlib
  import numpy as np
  from jax.experimental import multihost_utils
  digest = hashlib.sha256(config.to_json(sort_keys=True).encode()).digest()[:8]
  local = np.frombuffer(digest, np.uint8).astype(np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(local))  # [processes, 8]
  differing = [p for p in range(gathered.shape[0]) if not np.array_equal(gathered[p], local)]
  if differing:
    raise ConfigError(f"process {jax.process_index()}'s config differs from processes "
                      f"{differing}; every process must be launched with the same --config "
                      "and overrides.")
