"""Config sections → jmeta objects. The one place names map to factories.

Library code never sees a ConfigDict: each builder unpacks its section into keyword arguments.
"""
import jax
import numpy as np
import optax

from jmeta import augment
from jmeta import classifiers
from jmeta import inner
from jmeta import meta
from jmeta import models
from jmeta import parallel
from jmeta import tasks
from jmeta.data import Dataset

ADAPTERS = ("contrastive", "prototype", "head", "zero_head", "none")
OBJECTIVES = ("bootstrap", "protonet", "simclr")
CLASSIFIERS = ("prototype", "head")
TASK_LABELS = ("none", "true")
MODELS = ("conv4", "resnet12")
SOURCES = ("omniglot", "mnist", "digits", "tfds:<name>")


def load_dataset(data_config, split: str, *, rotations: bool) -> Dataset:
  """Loads `split` of the configured source as a `Dataset` (uint8, ink high)."""
  from jmeta import data
  data_dir = data_config.data_dir or None
  source = data_config.source
  if source == "omniglot":
    return data.omniglot.load(split, data_dir=data_dir, image_size=data_config.image_size,
                              rotations=rotations)
  if source == "mnist":
    return data.mnist.load(data_dir=data_dir, image_size=data_config.image_size)
  if source == "digits":
    return data.digits.load(data_dir=data_dir, image_size=data_config.image_size)
  if source.startswith("tfds:"):
    return data.tfds.load(source[len("tfds:"):], split, data_dir=data_dir,
                          image_size=data_config.image_size)
  raise ValueError(f"data.source={source!r} is not supported; allowed values: {SOURCES}.")


def build_model(model_config, *, image_size: int, channels: int):
  if model_config.name == "conv4":
    return models.conv4.make(image_size=image_size, channels=channels, width=model_config.width,
                             num_blocks=model_config.num_blocks, norm=model_config.norm,
                             conv_impl=model_config.conv_impl, conv_bias=model_config.conv_bias)
  if model_config.name == "resnet12":
    return models.resnet12.make(image_size=image_size, channels=channels,
                                width=model_config.width, norm=model_config.norm,
                                conv_impl=model_config.conv_impl)
  raise ValueError(f"model.name={model_config.name!r} is not supported; allowed: {MODELS}.")


def build_augment(augment_config):
  """The per-view augmentation chain; ops whose settings make them the identity are left out."""
  ops = []
  if augment_config.elastic_magnitude > 0:
    # First, in the image's own pixels: a different hand drawing the same character.
    ops.append(augment.random_elastic(magnitude=augment_config.elastic_magnitude,
                                      smoothness=augment_config.elastic_smoothness))
  if tuple(augment_config.crop_scale) != (1.0, 1.0):
    ops.append(augment.random_resized_crop(scale=tuple(augment_config.crop_scale)))
  if augment_config.flip_probability > 0:
    ops.append(augment.random_flip(probability=augment_config.flip_probability))
  if augment_config.rotate90:
    ops.append(augment.random_rotate90())
  if (augment_config.affine_degrees or augment_config.affine_shear
      or augment_config.affine_translate or tuple(augment_config.affine_scale) != (1.0, 1.0)):
    ops.append(augment.random_affine(degrees=augment_config.affine_degrees,
                                     shear=augment_config.affine_shear,
                                     translate=augment_config.affine_translate,
                                     scale=tuple(augment_config.affine_scale)))
  if augment_config.erasing_probability > 0:
    ops.append(augment.random_erasing(probability=augment_config.erasing_probability))
  return augment.chain(*ops) if ops else augment.identity()


def build_meta_params(config, model, key):
  """Initial model params (+ a meta-learned head for the "head" adapter) → adapter.init_meta."""
  key_model, key_head = jax.random.split(key)
  params = {"encoder": model.init(key_model)}
  if config.inner.adapter == "head":
    params["head"] = inner.init_head(key_head, model.embedding_dim, config.tasks.num_ways)
  return params


def build_objective(config, model):
  """Returns `(adapter or None, objective)` for the configured algorithm."""
  inner_config, meta_config, num_ways = config.inner, config.meta, config.tasks.num_ways
  objective_name = meta_config.objective
  if objective_name == "protonet":
    return None, meta.protonet(model.apply, num_ways=num_ways, distance="euclidean",
                               temperature=meta_config.temperature)
  if objective_name == "simclr":
    return None, meta.simclr(model.apply, temperature=inner_config.temperature)
  if objective_name != "bootstrap":
    raise ValueError(f"meta.objective={objective_name!r} is not supported; allowed values: "
                     f"{OBJECTIVES}.")
  adapt = "all" if inner_config.adapt == "all" else tuple(
      part.strip() for part in inner_config.adapt.split(",") if part.strip())
  common = dict(step_size=inner_config.step_size, first_order=inner_config.first_order,
                adapt=adapt, learn_step_sizes=inner_config.learn_step_sizes)
  name = inner_config.adapter
  if name == "contrastive":
    adapter = inner.contrastive(model.apply, temperature=inner_config.temperature, **common)
  elif name == "prototype":
    adapter = inner.prototype(model.apply, num_ways=num_ways,
                              temperature=inner_config.temperature, **common)
  elif name == "head":
    adapter = inner.head(model.apply, **common)
  elif name == "zero_head":
    adapter = inner.head(model.apply, num_ways=num_ways, embedding_dim=model.embedding_dim,
                         **common)
  else:
    raise ValueError(f"inner.adapter={name!r} is not supported with meta.objective='bootstrap'; "
                     f"allowed values: {ADAPTERS[:-1]}.")
  if meta_config.classifier == "prototype":
    logits_fn = classifiers.prototype(model.apply, num_ways=num_ways, distance="cosine",
                                      temperature=meta_config.temperature)
  elif meta_config.classifier == "head":
    logits_fn = classifiers.linear_head(model.apply)
  else:
    raise ValueError(f"meta.classifier={meta_config.classifier!r} is not supported; allowed "
                     f"values: {CLASSIFIERS}.")
  objective = meta.bootstrap(adapter, logits_fn, num_inner_steps=inner_config.num_steps,
                             num_bootstrap_steps=meta_config.num_bootstrap_steps,
                             mix=meta_config.mix, matching=meta_config.matching,
                             bmg_query_step=meta_config.bmg_query_step, remat=inner_config.remat)
  return adapter, objective


def run_keys(config):
  """`(key_init, key_loop)` of a run: its initialisation and its training loop, from `config.seed`
  (`experiments.evaluate --untrained` rebuilds the same initialisation from them)."""
  key_init, key_loop = jax.random.split(jax.random.key(config.seed))
  return key_init, key_loop


def initial_state(config, model, adapter, optimizer, key):
  """The TrainState at step 0 (also the template that checkpoints restore into)."""
  from jmeta import train
  params = build_meta_params(config, model, key)
  meta_params = adapter.init_meta(params) if adapter else {"params": params}
  return train.init_state(meta_params, optimizer)


def build_sampler(config, augment_fn):
  """`(key, data) -> tasks [T]` from what `training_data` put on device.

  Unsupervised: the pool is `[D, M/D, ...]`, one shard per device, and shard d yields tasks
  d·T/D … (d+1)·T/D − 1 from its own images. Labeled: one replicated pool.
  """
  task_config = config.tasks
  if task_config.labels == "none":
    def sample(key, pools):
      num_shards = pools.shape[0]
      def sample_shard(shard_key, images):
        return tasks.sample_unsupervised_tasks(
            shard_key, images, num_tasks=task_config.num_tasks // num_shards,
            num_ways=task_config.num_ways, num_support=task_config.num_support,
            num_queries=task_config.num_queries, augment_fn=augment_fn)
      per_shard = jax.vmap(sample_shard)(jax.random.split(key, num_shards), pools)
      return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), per_shard)
  elif task_config.labels == "true":
    def sample(key, pool):
      return tasks.sample_episodes(
          key, pool, num_episodes=task_config.num_tasks, num_ways=task_config.num_ways,
          num_shots=task_config.num_support, num_queries=task_config.num_queries)
  else:
    raise ValueError(f"tasks.labels={task_config.labels!r} is not supported; allowed values: "
                     f"{TASK_LABELS}.")
  return sample


def training_data(config, dataset: Dataset, mesh):
  """What `sample` reads on device: per-device shards of unlabeled images, or a labeled pool."""
  if config.tasks.labels == "none":
    return parallel.shard_pool(dataset.images, mesh)
  return parallel.replicate(tasks.labeled_pool(dataset), mesh)


def build_optimizer(optimizer_config, *, num_steps: int) -> optax.GradientTransformation:
  lr = optimizer_config.learning_rate
  if optimizer_config.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=min(optimizer_config.warmup_steps, max(num_steps - 1, 0)),
        decay_steps=max(num_steps, 1))
  elif optimizer_config.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  else:
    raise ValueError(f"optimizer.schedule={optimizer_config.schedule!r} is not supported; "
                     "allowed values: ('cosine', 'constant').")
  chain = []
  if optimizer_config.gradient_clip > 0:
    chain.append(optax.clip_by_global_norm(optimizer_config.gradient_clip))
  chain.append(optax.adam(schedule))
  return optax.chain(*chain)


def take_first(dataset: Dataset, count: int) -> Dataset:
  """The first `count` images (smoke runs), relabelled to the classes they contain."""
  if not count:
    return dataset
  present, labels = np.unique(dataset.labels[:count], return_inverse=True)
  return Dataset(images=np.asarray(dataset.images[:count]), labels=labels.astype(np.int32),
                 class_names=tuple(dataset.class_names[i] for i in present))
