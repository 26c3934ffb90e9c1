r"""BMSSL on Omniglot: unsupervised (views-as-classes) tasks, contrastive inner loop, bootstrap.

Command (full run):
  python -m experiments.train --config=configs/bmssl_omniglot.py --workdir=workdirs/bmssl_omniglot
Smoke run (seconds):
  python -m experiments.train --config=configs/bmssl_omniglot.py:smoke --workdir=/tmp/bmssl_smoke
Evaluate:
  python -m experiments.evaluate --workdir=workdirs/bmssl_omniglot

On a CPU, split it into one JAX device per core (as the recorded run):
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m experiments.train ...

Expected on a 2-core CPU (docs/RESULTS.md, seed 0): 600 steps in 55 min on a machine shared with
other runs (load ≈ 10); validation 5-way 1-shot 83% after 100 steps, 87.5 ± 1.2% at the end.
Test (Vinyals test characters × 4 rotations): 5w1s 89.3 ± 0.3, 5w5s 96.2 ± 0.1 (2,000
episodes), 20w1s 73.6 ± 0.6, 20w5s 88.5 ± 0.4 (300 episodes); MNIST 5w1s 63.6, 5w5s 81.4.
This is the only BMSSL setting run at full length so far (L = 1, δ = 1 were chosen for the CPU
budget); its δ = 0 ablation matches it on Omniglot and is 4 points lower on MNIST.
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
