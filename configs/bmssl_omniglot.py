r"""BMSSL on Omniglot: unsupervised (views-as-classes) tasks, contrastive inner loop, bootstrap.

Command (full run):
  python -m experiments.train --config=configs/bmssl_omniglot.py --workdir=workdirs/bmssl_omniglot
Smoke run (seconds):
  python -m experiments.train --config=configs/bmssl_omniglot.py:smoke --workdir=/tmp/bmssl_smoke
Evaluate:
  python -m experiments.evaluate --workdir=workdirs/bmssl_omniglot

Expected runtime and result on a 2-core CPU: see docs/RESULTS.md (not yet measured for these
defaults).
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  config = common.base_config()
  common.cpu_schedule(config, num_steps=600, every_steps=100)
  common.one_task_per_chunk(config)
  config.inner.num_steps = 1
  config.meta.num_bootstrap_steps = 1
  if arg.smoke:
    common.shrink_for_smoke(config)
  return config
