r"""Few-shot evaluation of a trained workdir on any protocol; prints and saves a table.

Examples:
  python -m experiments.evaluate --workdir=workdirs/bmssl_omniglot
  python -m experiments.evaluate --workdir=workdirs/bmssl_omniglot --dataset=mnist \
      --ways=5,10 --shots=1,5 --episodes=2000 --adapted=both

Writes `<workdir>/eval_<name>.json` and `.md` (name from --name, default the dataset).
"""
import copy
import json
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS

# The fields of the run's `config.inner` an adapted evaluation may override.
ADAPTATION_FIELDS = ("adapter", "num_steps", "step_size")


def define_flags():
  """Command-line flags; defined only when run as a program, so modules import cleanly."""
  flags.DEFINE_string("workdir", None, "A training workdir (config.json + checkpoints).")
  flags.DEFINE_string("dataset", "omniglot:vinyals_test",
                      "omniglot:<split> | mnist | digits | tfds:<name>:<split>.")
  flags.DEFINE_bool("rotations", True, "Omniglot: rotations as extra classes.")
  flags.DEFINE_list("ways", ["5", "20"], "N values.")
  flags.DEFINE_list("shots", ["1", "5"], "K values.")
  flags.DEFINE_integer("queries", 15, "Queries per class.")
  flags.DEFINE_integer("episodes", 2000, "Episodes per protocol.")
  flags.DEFINE_integer("seed", 0, "Selects the episodes.")
  flags.DEFINE_enum("adapted", "no", ["no", "yes", "both"],
                    "Classify after an inner loop on the labeled support. On CPU add "
                    "--conv_impl=native: its weight gradient is far faster (20-way 5-shot, "
                    "5 steps: 0.8 s per episode against over 3 s with xla).")
  flags.DEFINE_string("adapt_loss", None,
                      "With --adapted: the inner loop's loss on the labeled support, "
                      "contrastive | prototype (default: the run's inner.adapter).")
  flags.DEFINE_integer("adapt_steps", None,
                       "With --adapted: inner steps on the support (default: the run's L).")
  flags.DEFINE_float("adapt_step_size", None,
                     "With --adapted: inner step size (default: the run's α).")
  flags.DEFINE_string("name", None, "Output file suffix (default: from --dataset).")
  flags.DEFINE_enum("conv_impl", "xla", ["xla", "matmul", "native"],
                    "Convolution lowering for evaluation (same values; with one set of weights "
                    "shared by every episode XLA's own convolution is the fastest on CPU).")
  flags.DEFINE_integer("max_images_per_batch", 4000,
                       "Caps the episodes per jitted batch so that N*(K+Q)*episodes stays below "
                       "this (each device embeds one episode at a time, so memory is small).")
  flags.DEFINE_bool("xla_cpu_fast_flags", True,
                    "Add experiments/xla_cpu.py's FAST_FLAGS to XLA_FLAGS before JAX starts.")
  flags.DEFINE_integer("cpu_devices", 0,
                       "CPU only: split the host into this many JAX devices and spread each "
                       "batch's episodes over them (0: one per core; 2,000 5-way 1-shot "
                       "episodes take 44 s with 2 devices on 2 cores, 64 s with 1). Ignored if "
                       "XLA_FLAGS sets --xla_force_host_platform_device_count.")
  flags.DEFINE_bool("untrained", False, "Evaluate the run's initialisation (its config and "
                    "seed) instead of its checkpoint: the untrained baseline.")


def load_workdir(workdir: str, *, conv_impl: str | None = None, untrained: bool = False):
  """(config, model, adapter, meta_params, step) of the newest restorable checkpoint in `workdir`.

  `conv_impl` overrides the trained model's convolution lowering (every lowering computes the
  same function of the same parameters). `untrained` returns the run's initialisation (its
  config and seed, step 0) instead of a checkpoint: the baseline under the same protocol.
  """
  import ml_collections

  from experiments import checkpoints as checkpoints_lib
  from experiments import factories
  with open(os.path.join(workdir, "config.json")) as file:
    config = ml_collections.ConfigDict(json.load(file))
  if conv_impl is not None:
    config.model.conv_impl = conv_impl
  if "conv_bias" not in config.model:  # written before the field existed: Conv4 had biases
    config.model.conv_bias = True if config.model.name == "conv4" else None
  channels = 3 if config.data.source.startswith("tfds:") else 1
  model = factories.build_model(config.model, image_size=config.data.image_size,
                                channels=channels)
  adapter, _ = factories.build_objective(config, model)
  optimizer = factories.build_optimizer(config.optimizer, num_steps=config.num_steps)
  key_init, _ = factories.run_keys(config)
  template = factories.initial_state(config, model, adapter, optimizer, key_init)
  if untrained:
    return config, model, adapter, template.meta_params, 0
  checkpoints = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                            keep=config.keep_checkpoints)
  state = checkpoints.restore_latest(template)
  checkpoints.close()
  if state is None:
    raise FileNotFoundError(f"no restorable checkpoint under {workdir}/checkpoints.")
  return config, model, adapter, state.meta_params, int(state.step)


def load_eval_dataset(spec: str, *, image_size: int, rotations: bool):
  from jmeta import data
  kind, _, rest = spec.partition(":")
  if kind == "omniglot":
    return data.omniglot.load(rest or "vinyals_test", image_size=image_size, rotations=rotations)
  if kind == "mnist":
    return data.mnist.load(image_size=image_size)
  if kind == "digits":
    return data.digits.load(image_size=image_size)
  if kind == "tfds":
    name, _, split = rest.partition(":")
    return data.tfds.load(name, split or "test", image_size=image_size)
  raise ValueError(f"--dataset={spec!r} is not supported; allowed: omniglot:<split>, mnist, "
                   "digits, tfds:<name>:<split>.")


def _checked_overrides(inner_overrides: dict | None) -> dict:
  unknown = sorted(set(inner_overrides or {}) - set(ADAPTATION_FIELDS))
  if unknown:
    raise ValueError(f"inner_overrides: {unknown} cannot be overridden; allowed: "
                     f"{list(ADAPTATION_FIELDS)}.")
  return dict(inner_overrides or {})


def adapted_classifier(config, model, meta_params, *, num_ways: int,
                       inner_overrides: dict | None = None):
  """`(classify_fn, settings)`: the config's inner rule on the labeled support, then predictions.

  Head adapters predict with the head: the meta-learned one when `num_ways` matches training,
  otherwise a zero-initialised head of `num_ways` outputs. Others use cosine prototypes of the
  adapted encoder. `inner_overrides` replaces fields of the run's `config.inner` for this
  evaluation only (`adapter`, `num_steps`, `step_size`; None values keep the run's);
  `settings` are the values used.
  """
  from experiments import factories
  from jmeta import classifiers
  from jmeta import inner
  from jmeta.types import Batch
  eval_config = copy.deepcopy(config)
  eval_config.unlock()
  eval_config.tasks.num_ways = num_ways
  for field, value in _checked_overrides(inner_overrides).items():
    if value is not None:
      eval_config.inner[field] = value
  meta_params = dict(meta_params)
  if config.inner.adapter == "head" and num_ways != config.tasks.num_ways:
    eval_config.inner.adapter = "zero_head"
    meta_params["params"] = {k: v for k, v in meta_params["params"].items() if k != "head"}
    meta_params.pop("step_sizes", None)
  adapter, _ = factories.build_objective(eval_config, model)
  uses_head = eval_config.inner.adapter in ("head", "zero_head")
  logits_fn = (classifiers.linear_head(model.apply) if uses_head else
               classifiers.prototype(model.apply, num_ways=num_ways, distance="cosine"))

  def classify(key, support, support_labels, query):
    batch = Batch(support, support_labels)
    state, _ = inner.unroll(adapter, key, adapter.init(meta_params), batch,
                            eval_config.inner.num_steps)
    return logits_fn(state.params, batch, query)

  settings = {field: eval_config.inner[field] for field in ADAPTATION_FIELDS}
  return classify, settings


def evaluate_workdir(workdir: str, *, dataset: str = "omniglot:vinyals_test",
                     rotations: bool = True, ways=(5, 20), shots=(1, 5), num_queries: int = 15,
                     num_episodes: int = 2000, seed: int = 0, adapted: str = "no",
                     progress: bool = True, conv_impl: str | None = "xla",
                     untrained: bool = False, max_images_per_batch: int = 4000,
                     inner_overrides: dict | None = None) -> list:
  """Every (mode, N, K) protocol on `dataset`; returns rows of dicts.

  With adaptation, `inner_overrides` (see `adapted_classifier`) changes the inner loop run on
  each episode's labeled support, and each row's "adaptation" records the settings used.

  Each protocol runs in batches of at most 50 episodes and `max_images_per_batch` images.
  """
  from jmeta import evaluate
  overridden = [f for f, v in _checked_overrides(inner_overrides).items() if v is not None]
  if overridden and adapted == "no":
    raise ValueError(f"inner_overrides {overridden} (--adapt_loss/--adapt_steps/"
                     "--adapt_step_size) need adaptation: pass adapted='yes' or 'both'.")
  config, model, adapter, meta_params, step = load_workdir(workdir, conv_impl=conv_impl,
                                                           untrained=untrained)
  eval_set = load_eval_dataset(dataset, image_size=config.data.image_size, rotations=rotations)
  modes = {"no": [False], "yes": [True], "both": [False, True]}[adapted]
  if adapter is None and True in modes:
    raise ValueError(f"--adapted={adapted!r}: {config.meta.objective!r} has no inner loop.")
  rows = []
  for use_adaptation in modes:
    for num_ways in ways:
      for num_shots in shots:
        adaptation = None
        if use_adaptation:
          classify, adaptation = adapted_classifier(config, model, meta_params,
                                                    num_ways=num_ways,
                                                    inner_overrides=inner_overrides)
        else:
          encoder = meta_params["params"]["encoder"]
          classify = evaluate.prototype_classifier(lambda x: model.apply(encoder, x),
                                                   num_ways=num_ways)
        images_per_episode = num_ways * (num_shots + num_queries)
        batch_size = max(1, min(50, max_images_per_batch // images_per_episode))
        result = evaluate.few_shot_classifier(
            classify, eval_set, num_ways=num_ways, num_shots=num_shots,
            num_queries=num_queries, num_episodes=num_episodes, seed=seed,
            batch_size=batch_size, progress=progress)
        rows.append({"dataset": dataset, "rotations": rotations, "adapted": use_adaptation,
                     "adaptation": adaptation, "num_ways": num_ways, "num_shots": num_shots,
                     "num_queries": num_queries,
                     "num_episodes": num_episodes, "seed": seed, "step": step,
                     "accuracy": result.mean, "ci95": result.ci95})
  return rows


def markdown_table(rows) -> str:
  lines = ["| dataset | adapted | N-way | K-shot | episodes | accuracy (%) |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['dataset']} | {'yes' if row['adapted'] else 'no'} | "
                 f"{row['num_ways']} | {row['num_shots']} | {row['num_episodes']} | "
                 f"{100 * row['accuracy']:.2f} ± {100 * row['ci95']:.2f} |")
  return "\n".join(lines) + "\n"


def use_cpu_devices(count: int):
  """One JAX CPU device per core (or `count`), set before the backend starts."""
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return
  if count < 0:
    raise app.UsageError(f"--cpu_devices={count} must be >= 0 (0: one per core).")
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_num_cpu_devices", count or os.cpu_count() or 1)


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  if FLAGS.xla_cpu_fast_flags:
    from experiments import xla_cpu  # pylint: disable=import-outside-toplevel
    xla_cpu.add_fast_flags()
  use_cpu_devices(FLAGS.cpu_devices)
  rows = evaluate_workdir(FLAGS.workdir, dataset=FLAGS.dataset, rotations=FLAGS.rotations,
                          ways=[int(w) for w in FLAGS.ways], shots=[int(k) for k in FLAGS.shots],
                          num_queries=FLAGS.queries, num_episodes=FLAGS.episodes,
                          seed=FLAGS.seed, adapted=FLAGS.adapted, conv_impl=FLAGS.conv_impl,
                          untrained=FLAGS.untrained,
                          max_images_per_batch=FLAGS.max_images_per_batch,
                          inner_overrides={"adapter": FLAGS.adapt_loss,
                                           "num_steps": FLAGS.adapt_steps,
                                           "step_size": FLAGS.adapt_step_size})
  table = markdown_table(rows)
  print(table)
  name = FLAGS.name or FLAGS.dataset.replace(":", "_")
  with open(os.path.join(FLAGS.workdir, f"eval_{name}.json"), "w") as file:
    json.dump(rows, file, indent=2)
  with open(os.path.join(FLAGS.workdir, f"eval_{name}.md"), "w") as file:
    file.write(table)


if __name__ == "__main__":
  define_flags()
  app.run(main)
