"""Shared pieces of every jmeta config: argument parsing and the full field layout.

Every field the trainer reads is declared here (the trainer has no hidden defaults); algorithm
configs call `base_config` and override fields, big_vision style.
"""
import ml_collections


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  """Parses `"key=value,flag,..."` into a ConfigDict typed by `defaults` (big_vision style).

  A bare name sets a boolean default to True (`"smoke"` is `"smoke=True"`). Unknown keys and
  values that do not parse as the default's type raise ValueError naming the key.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, sep, value = item.partition("=")
    name = name.strip()
    if name not in defaults:
      raise ValueError(f"config argument {name!r} is unknown; allowed: {sorted(defaults)}.")
    default = defaults[name]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {name!r} needs a value ({name}=...).")
      parsed[name] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {name}={value!r} must be true or false.")
      parsed[name] = value.lower() in ("true", "1")
    else:
      try:
        parsed[name] = type(default)(value)
      except ValueError as error:
        raise ValueError(f"config argument {name}={value!r} is not a "
                         f"{type(default).__name__}.") from error
  return parsed


def base_config() -> ml_collections.ConfigDict:
  """Every field, with BMSSL-on-Omniglot values; algorithm configs override what differs."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_steps = 20000
  config.num_devices = 0           # 0: every device of every process
  config.task_chunk_size = 0       # 0: vmap all tasks at once; c: lax.map over chunks of c

  # Data
  config.data = ml_collections.ConfigDict()
  config.data.source = "omniglot"  # omniglot | mnist | digits | tfds:<name>
  config.data.train_split = "vinyals_train"
  config.data.eval_split = "vinyals_val"
  config.data.image_size = 28
  # Omniglot only: add the characters rotated by 90/180/270 degrees, as more classes (labeled
  # tasks, evaluation) or as more unlabeled images (views-as-classes). Other sources refuse
  # train_rotations=True and ignore eval_rotations.
  config.data.train_rotations = False
  config.data.eval_rotations = True
  config.data.data_dir = ""        # "": $JMETA_DATA_DIR, else the per-user cache directory
  config.data.max_train_images = 0  # 0: all; >0: the first n (smoke tests)

  # Model
  config.model = ml_collections.ConfigDict()
  config.model.name = "conv4"      # conv4 | resnet12
  config.model.width = 64
  config.model.num_blocks = 4
  config.model.norm = "batch"      # batch (transductive) | group | none
  config.model.conv_impl = "matmul"
  # Conv4's convolution biases: None (unset) gives them unless norm=batch, which cancels them
  # (jmeta/models/conv4.py); True adds them anyway, as every run before 2026-12-01 (session 15).
  config.model.conv_bias = ml_collections.config_dict.placeholder(bool)

  # Tasks
  config.tasks = ml_collections.ConfigDict()
  config.tasks.labels = "none"     # none: views-as-classes from unlabeled images | true: episodes
  config.tasks.num_tasks = 16      # T, the meta-batch
  config.tasks.num_ways = 5        # N
  config.tasks.num_support = 2     # S views (unsupervised) or K shots (labeled) per class
  config.tasks.num_queries = 3     # Q views or images per class

  # Augmentation (applied to every view; Omniglot-style characters)
  config.augment = ml_collections.ConfigDict()
  config.augment.crop_scale = (0.6, 1.0)   # random resized crop area fraction; (1, 1): off
  config.augment.flip_probability = 0.0
  config.augment.rotate90 = False
  config.augment.affine_degrees = 15.0
  config.augment.affine_shear = 10.0
  config.augment.affine_translate = 0.1
  config.augment.affine_scale = (0.9, 1.1)
  config.augment.erasing_probability = 0.3
  config.augment.elastic_magnitude = 0.0   # smooth random warp: px std of the displacement; 0: off
  config.augment.elastic_smoothness = 3.0  # px std of the Gaussian that smooths that warp

  # Inner loop
  config.inner = ml_collections.ConfigDict()
  config.inner.adapter = "contrastive"  # contrastive | prototype | head | zero_head | none
  config.inner.step_size = 0.1     # α
  config.inner.num_steps = 5       # L
  config.inner.temperature = 0.5   # τ of the contrastive / prototype inner loss
  config.inner.first_order = False
  config.inner.adapt = "all"       # all | comma-separated parameter path prefixes
  config.inner.learn_step_sizes = False
  config.inner.remat = False

  # Meta objective
  config.meta = ml_collections.ConfigDict()
  config.meta.objective = "bootstrap"  # bootstrap | protonet | simclr
  config.meta.classifier = "prototype"  # prototype (cosine) | head
  config.meta.temperature = 0.1    # τ of the query predictions
  config.meta.num_bootstrap_steps = 5  # δ
  config.meta.mix = 0.5            # λ
  config.meta.matching = "kl"      # kl | l2
  config.meta.bmg_query_step = False

  # Optimizer
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"  # cosine | constant
  config.optimizer.warmup_steps = 500
  config.optimizer.gradient_clip = 10.0  # global norm; 0: off
  config.optimizer.nonfinite = "skip"   # skip | stop
  config.optimizer.max_skipped = 100    # stop once this many updates were skipped

  # Eval
  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 1000
  config.eval.num_ways = 5
  config.eval.num_shots = 1
  config.eval.num_queries = 15
  config.eval.num_episodes = 200
  config.eval.batch_size = 50
  config.eval.seed = 0
  config.eval.at_start = True      # also evaluate the untrained initialisation (a step-0 line)

  # Logging and checkpoints
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  return config


def cpu_schedule(config: ml_collections.ConfigDict, *, num_steps: int,
                 every_steps: int) -> ml_collections.ConfigDict:
  """The schedule of the runs in docs/RESULTS.md: `num_steps` outer steps (tens of minutes on
  a 2-core CPU), 50 warm-up steps, evaluation and a checkpoint every `every_steps`."""
  config.num_steps = num_steps
  config.optimizer.warmup_steps = 50
  config.eval.every_steps = every_steps
  config.checkpoint_every_steps = every_steps
  config.log_every_steps = 25
  return config


def one_task_per_chunk(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fastest CPU path for per-task inner loops (docs/PERFORMANCE.md): each task's
  meta-gradient inside the task loop, with XLA's own convolutions."""
  config.model.conv_impl = "native"
  config.task_chunk_size = 1
  return config


def bmssl_views(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The unlabeled images and views of the default BMSSL config, shared by the unsupervised
  baselines so that they differ from it only in the algorithm.

  The train characters in all four rotations, still without labels: each rotated image is just
  another image to build views-as-classes tasks from (the test classes are characters x
  rotations). Every view is also bent by a smooth random displacement field (1 px std, 3 px
  smoothness), a stand-in for another hand drawing the same character. Their gains for BMSSL
  are in docs/RESULTS.md.
  """
  config.data.train_rotations = True
  config.augment.elastic_magnitude = 1.0
  return config


def disable_augmentation(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Supervised episodes use the images as they are."""
  config.augment.crop_scale = (1.0, 1.0)
  config.augment.flip_probability = 0.0
  config.augment.rotate90 = False
  config.augment.affine_degrees = 0.0
  config.augment.affine_shear = 0.0
  config.augment.affine_translate = 0.0
  config.augment.affine_scale = (1.0, 1.0)
  config.augment.erasing_probability = 0.0
  config.augment.elastic_magnitude = 0.0
  return config


def shrink_for_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `smoke` preset: a few steps on a small slice of the real data, in seconds on a CPU."""
  config.num_steps = 6
  config.data.max_train_images = 200
  config.model.width = 8
  # Two blocks (7x7 feature maps at 28x28) compile in 29 s where four take 50 s (a cold
  # `bmssl_omniglot.py:smoke` launch, 3 steps), and compiling is most of a smoke run.
  config.model.num_blocks = min(config.model.num_blocks, 2)
  config.tasks.num_tasks = 2
  config.tasks.num_ways = min(config.tasks.num_ways, 5)
  config.inner.num_steps = min(config.inner.num_steps, 1)
  config.meta.num_bootstrap_steps = min(config.meta.num_bootstrap_steps, 1)
  config.optimizer.warmup_steps = 2
  config.eval.every_steps = 3
  config.eval.num_episodes = 4
  config.eval.num_queries = 5
  config.eval.batch_size = 2
  config.eval.at_start = False
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  return config
