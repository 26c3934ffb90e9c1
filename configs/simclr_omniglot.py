r"""SimCLR-style contrastive pre-training on Omniglot (no inner loop), prototype evaluation.

Each "task" is N unlabeled images × 2 views; the loss is NT-Xent over the views.

Command:
  python -m experiments.train --config=configs/simclr_omniglot.py --workdir=workdirs/simclr_omniglot
Smoke run:
  python -m experiments.train --config=configs/simclr_omniglot.py:smoke --workdir=/tmp/simclr_smoke

Expected on a 2-core CPU (docs/RESULTS.md, seed 0): 800 steps in 39 min while sharing the machine
with other runs (≈0.9 s/step alone); validation 5-way 1-shot peaks early (71.9% at step 200) and
drifts down to 69.6%; test 5w1s 71.3 ± 1.1, 5w5s 82.8 ± 0.7 (600 episodes), 20w1s 47.5, 20w5s
62.1 (300 episodes); untrained Conv4: 55.3 / 75.5.
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
