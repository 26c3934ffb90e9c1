r"""SimCLR-style contrastive pre-training on Omniglot (no inner loop), prototype evaluation.

Each "task" is N unlabeled images × 2 views; the loss is NT-Xent over the views.

Command:
  python -m experiments.train --config=configs/simclr_omniglot.py --workdir=workdirs/simclr_omniglot
Smoke run:
  python -m experiments.train --config=configs/simclr_omniglot.py:smoke --workdir=/tmp/simclr_smoke

Expected runtime and result on a 2-core CPU: see docs/RESULTS.md (not yet measured).
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  config = common.base_config()
  config.tasks.num_ways = 64      # images per batch element; 2 views each
  config.tasks.num_support = 1
  config.tasks.num_queries = 1
  config.tasks.num_tasks = 4      # 4 × 64 = 256 images per step
  config.inner.adapter = "none"
  config.inner.num_steps = 0
  config.inner.temperature = 0.5
  config.meta.objective = "simclr"
  config.meta.num_bootstrap_steps = 0
  config.meta.mix = 1.0
  common.cpu_schedule(config, num_steps=800, every_steps=200)
  if arg.smoke:
    common.shrink_for_smoke(config)
    config.tasks.num_ways = 8
  return config
