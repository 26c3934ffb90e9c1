r"""UMTRA-style unsupervised MAML on Omniglot: views as classes, zero-initialised head, δ = 0.

Khodadadeh et al. 2019 reconstruct 1-shot tasks from N unlabeled images, one augmented view
as the query; the head is zeroed per task ("zeroing trick"), there is no bootstrap.

Command:
  python -m experiments.train --config=configs/umtra_omniglot.py --workdir=workdirs/umtra_omniglot
Smoke run:
  python -m experiments.train --config=configs/umtra_omniglot.py:smoke --workdir=/tmp/umtra_smoke

Expected on a 2-core CPU (docs/RESULTS.md, seed 0; XLA_FLAGS=--xla_force_host_platform_device_count=2):
800 steps in 37 min on an otherwise idle machine; validation 5w1s 73.1% at the end (BMSSL: 88%
after 100 steps). Test (2,000 episodes each): 5w1s 73.3 ± 0.5, 5w5s 85.5 ± 0.3,
20w1s 49.9 ± 0.3, 20w5s 67.1 ± 0.2; MNIST 5w1s 54.7 ± 0.5, 5w5s 70.3 ± 0.4. Far below the
paper's 83.8 / 95.4 / 74.3 / 92.1 (a much longer run with its own augmentations), and 13–33
points below BMSSL given the same views and time (its 800 steps, the BMSSL default until
session 14). The unlabeled images and views are BMSSL's (`common.bmssl_views`: rotated train
characters, elastic warp), so the algorithm is what differs.
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  config = common.base_config()
  common.bmssl_views(config)
  config.tasks.num_ways = 5
  config.tasks.num_support = 1
  config.tasks.num_queries = 1
  config.tasks.num_tasks = 16
  config.inner.adapter = "zero_head"
  config.inner.step_size = 0.4
  config.inner.num_steps = 5
  config.meta.classifier = "head"
  config.meta.num_bootstrap_steps = 0
  config.meta.mix = 1.0
  common.cpu_schedule(config, num_steps=800, every_steps=100)
  common.one_task_per_chunk(config)
  if arg.smoke:
    common.shrink_for_smoke(config)
  return config
