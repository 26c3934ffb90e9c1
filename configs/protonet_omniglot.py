r"""Supervised prototypical networks on Omniglot (an upper bound for the unsupervised rows).

Episodes from the Vinyals train characters × 4 rotations, squared-euclidean prototypes, no
inner loop (Snell et al. 2017 train with more ways than they test).

Command:
  python -m experiments.train --config=configs/protonet_omniglot.py --workdir=workdirs/protonet_omniglot
Smoke run:
  python -m experiments.train --config=configs/protonet_omniglot.py:smoke --workdir=/tmp/protonet_smoke

Expected on a 2-core CPU (docs/RESULTS.md, seed 0; XLA_FLAGS=--xla_force_host_platform_device_count=2):
1,000 steps in 29 min on an otherwise idle machine (≈ 1.7 s/step); validation 5w1s 98.0% at
the end. Test (2,000 episodes each): 97.9 ± 0.1 (5w1s), 99.5 ± 0.0 (5w5s), 92.6 ± 0.1 (20w1s),
98.1 ± 0.0 (20w5s); MNIST 77.4 ± 0.4 / 91.9 ± 0.2; against the paper's 98.8 / 99.7 / 96.0 /
98.9.
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  config = common.base_config()
  config.data.train_rotations = True
  config.tasks.labels = "true"
  config.tasks.num_ways = 20
  config.tasks.num_support = 1
  config.tasks.num_queries = 5
  config.tasks.num_tasks = 4
  common.disable_augmentation(config)
  config.inner.adapter = "none"
  config.inner.num_steps = 0
  config.meta.objective = "protonet"
  config.meta.temperature = 1.0
  config.meta.num_bootstrap_steps = 0
  config.meta.mix = 1.0
  common.cpu_schedule(config, num_steps=1000, every_steps=200)
  if arg.smoke:
    common.shrink_for_smoke(config)
    config.tasks.num_ways = 5
  return config
