r"""UMTRA-style unsupervised MAML on Omniglot: views as classes, zero-initialised head, δ = 0.

Khodadadeh et al. 2019 reconstruct 1-shot tasks from N unlabeled images, one augmented view
as the query; the head is zeroed per task ("zeroing trick"), there is no bootstrap.

Command:
  python -m experiments.train --config=configs/umtra_omniglot.py --workdir=workdirs/umtra_omniglot
Smoke run:
  python -m experiments.train --config=configs/umtra_omniglot.py:smoke --workdir=/tmp/umtra_smoke

Expected on a 2-core CPU (docs/RESULTS.md, seed 0; XLA_FLAGS=--xla_force_host_platform_device_count=2):
500 steps in 32 min on a shared machine; validation 5w1s 71.7%; test 5w1s 71.3 ± 0.9, 5w5s
84.2 ± 0.6 (600 episodes) — far below the paper's 83.8 / 95.4 (a much longer run).
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  config = common.base_config()
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
  common.cpu_schedule(config, num_steps=500, every_steps=100)
  common.one_task_per_chunk(config)
  if arg.smoke:
    common.shrink_for_smoke(config)
  return config
