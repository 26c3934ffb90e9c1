r"""BMSSL on Omniglot: unsupervised (views-as-classes) tasks, contrastive inner loop, bootstrap.

Command (full run):
  python -m experiments.train --config=configs/bmssl_omniglot.py --workdir=workdirs/bmssl_omniglot
Smoke run (seconds):
  python -m experiments.train --config=configs/bmssl_omniglot.py:smoke --workdir=/tmp/bmssl_smoke
Evaluate:
  python -m experiments.evaluate --workdir=workdirs/bmssl_omniglot

On a CPU, split it into one JAX device per core (as the recorded run):
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m experiments.train ...

Expected on a 2-core CPU (docs/RESULTS.md, two JAX devices, quiet): 2,200 steps in ≈ 42 min
on 2026-12-01's machine (≈ 1.1 s/step; the same machine has run the step in up to 2.45 s on
slower days, so ≈ 40–90 min); validation 5-way 1-shot 88% after 100 steps, 94.6% at the end.
Test (Vinyals test characters × 4 rotations, 2,000 episodes each), seed 0: 5w1s 95.5 ± 0.2,
5w5s 98.9 ± 0.1, 20w1s 86.2 ± 0.2, 20w5s 96.0 ± 0.1; MNIST 5w1s 77.3 ± 0.4, 5w5s 91.5 ± 0.2;
seed 1: 95.6 / 98.9 / 86.4 / 96.1, MNIST 75.0 / 90.1 (validation 94.5% at the end). Both seeds
are above UMTRA's published 83.8 / 95.4 / 74.3 / 92.1 on all four protocols; their mean is
0.9 / 0.2 / 3.3 / 1.1 points short of PsCo's 96.4 / 99.1 / 89.6 / 97.1. Those two runs had
Conv4's convolution biases and XLA's default loop emitter; since session 15 (no biases under
batch norm, `--xla_cpu_use_fusion_emitters=false`: the same function, other float32 rounding,
a 17% faster step) seed 0 gave 95.1 / 98.8 / 85.3 / 95.6, MNIST 74.7 / 90.0 in 24 min on a
faster day, seed 1 95.5 / 98.9 / 86.0 / 95.9, MNIST 75.1 / 90.4: within the seeds' spread.
`--config.model.conv_bias=True --xla_cpu_fast_flags=false` restores those two settings (not the
old rounding: later speed changes round differently too; docs/RESULTS.md).

How this setting was found (one change at a time, docs/RESULTS.md). N = 20, T = 4 is the best
of the ablations (N = 5, T = 16 before; the 150-step sweep); training on the rotated
characters too gained +0.4 to +1.7 on Omniglot (−2.7 on MNIST); the elastic warp of every view
(`augment.elastic_magnitude = 1`) gained +0.4 to +1.7 on Omniglot and +4.4 / +7.7 on MNIST on
top of that (1.5 px is worse than 1 on every protocol); the query temperature
`meta.temperature = 0.05` instead of 0.1 gained +0.7 to +3.3 on Omniglot and +2.6 / +2.7 on
MNIST on top of that; BMG's query step as the last bootstrap step (`meta.bmg_query_step`)
instead of one more contrastive step gained +0.2 to +1.9 on Omniglot (MNIST −0.6 / −0.3) on
top of that, for ≈ 18% more time per step; L = 1, δ = 1 were chosen for the CPU budget. At
800 steps (the default until session 14, ≈ 15–34 min: `--config.num_steps=800`) this config
gives 94.3 / 98.4 / 83.1 / 94.5, MNIST 72.7 / 88.6 (seed 1: 94.9 / 98.6 / 84.1 / 95.0, MNIST
75.2 / 90.3); without the bootstrap (δ = 0, 950 steps for the same time) it averages 94.7 /
98.5 / 83.8 / 94.8 over two seeds against 94.6 / 98.5 / 83.6 / 94.8 with it: level on
Omniglot, the bootstrap +0.8 / +0.7 ahead on MNIST; at this config's 2,200 steps δ = 0 (2,900
steps for the same time) is level again: 95.6 / 98.9 / 86.5 / 96.1, MNIST 77.4 / 91.6. Tried
at 800 steps and not better (one seed each): the inner τ 0.25 and the meta learning rate 2e-3
(between the two seeds), the inner step size α = 0.3 (below both), δ = 5 with the query step
(below both, 1.3× the compute); Q = 5 query views (`tasks.num_queries`) is level at equal
compute (1.36× the step's time). Longer training is what still pays: 1,600 steps give 95.0 /
98.7 / 84.8 / 95.4, Q = 5 for 1,600 steps 95.4 / 98.9 / 85.7 / 95.8, and these 2,200 steps with
Q = 3 — the same compute as the Q = 5 run — 95.5 / 98.9 / 86.2 / 96.0, the best row found.
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  config = common.base_config()
  # docs/RESULTS.md: accuracy still rises with the steps on this machine (800, 1,600, 2,200);
  # 2,200 steps of Q = 3 match or beat Q = 5 at the same compute (1,600 steps).
  common.cpu_schedule(config, num_steps=2200, every_steps=100)
  common.one_task_per_chunk(config)
  # docs/RESULTS.md, ablations: 20 images per task (19 negatives for every view in the inner
  # contrastive loss) learn the most per step, at the same 400 views per step as N = 5, T = 16.
  config.tasks.num_ways = 20
  config.tasks.num_tasks = 4
  # The train characters in all four rotations as more unlabeled images, and an elastic warp of
  # every view (common.bmssl_views; the gains of each are in the docstring above).
  common.bmssl_views(config)
  # Sharper query predictions (and so a sharper bootstrapped target) than the 0.1 of the other
  # configs: +0.7 to +3.3 points on every Omniglot protocol and +2.6 / +2.7 on MNIST
  # (docs/RESULTS.md).
  config.meta.temperature = 0.05
  config.inner.num_steps = 1
  config.meta.num_bootstrap_steps = 1
  # BMG's recipe for the target: its last (here its only) bootstrap step descends the query
  # cross-entropy, so the target is the adapted model moved towards the meta-objective rather
  # than one more contrastive step. +0.2 to +1.9 points on Omniglot (MNIST −0.6 / −0.3) for
  # ≈ 18% more time per step (docs/RESULTS.md).
  config.meta.bmg_query_step = True
  if arg.smoke:
    common.shrink_for_smoke(config)
  return config
