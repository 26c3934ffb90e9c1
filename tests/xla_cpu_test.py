"""experiments/xla_cpu.py: which flags are added when, and that XLA accepts them and computes
the same second-order meta-gradient with them as without (in fresh processes: XLA reads
XLA_FLAGS once per process)."""
import json
import os
import subprocess
import sys

import jaxlib
import numpy as np

from experiments import xla_cpu

_MEASURED = xla_cpu.MEASURED_JAXLIB + "2"
_AVX512 = frozenset({"sse2", "avx2", "avx512f", "avx512bw"})
_AVX2 = frozenset({"sse2", "avx2"})
_VECTOR_WIDTH_512 = "--xla_cpu_prefer_vector_width=512"


def test_fast_flags_are_added_on_the_measured_jaxlib_line_only():
  assert xla_cpu.fast_flags({}, _MEASURED, _AVX512) == xla_cpu.FAST_FLAGS
  assert xla_cpu.fast_flags({}, "0.11.0", _AVX512) == ()
  assert xla_cpu.fast_flags({}, "1.0.0", _AVX512) == ()


def test_the_512_bit_vector_width_is_added_only_on_cpus_with_avx512():
  assert _VECTOR_WIDTH_512 in xla_cpu.FAST_FLAGS
  without_512 = tuple(flag for flag in xla_cpu.FAST_FLAGS if flag != _VECTOR_WIDTH_512)
  assert xla_cpu.fast_flags({}, _MEASURED, _AVX2) == without_512
  assert xla_cpu.fast_flags({}, _MEASURED, frozenset()) == without_512


def test_cpu_features_read_the_flags_line_of_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\n"
                     "flags\t\t: fpu sse2 avx2 avx512f\nbugs\t\t: sysret_ss_attrs\n\n"
                     "processor\t: 1\nflags\t\t: fpu\n")
  assert xla_cpu.cpu_features(str(cpuinfo)) == {"fpu", "sse2", "avx2", "avx512f"}
  assert xla_cpu.cpu_features(str(tmp_path / "missing")) == frozenset()
  cpuinfo.write_text("processor\t: 0\n")
  assert xla_cpu.cpu_features(str(cpuinfo)) == frozenset()


def test_fast_flags_default_to_this_machines_cpu_features():
  assert (xla_cpu.fast_flags({}, _MEASURED)
          == xla_cpu.fast_flags({}, _MEASURED, xla_cpu.cpu_features()))


def test_fast_flags_keep_what_the_user_set():
  for index, flag in enumerate(xla_cpu.FAST_FLAGS):
    name = flag.split("=")[0]
    others = xla_cpu.FAST_FLAGS[:index] + xla_cpu.FAST_FLAGS[index + 1:]
    assert xla_cpu.fast_flags({"XLA_FLAGS": f"-v {name}=7"}, _MEASURED, _AVX512) == others
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  added = xla_cpu.add_fast_flags(environ)
  assert added == xla_cpu.fast_flags({}, jaxlib.__version__)
  assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *added]
  assert xla_cpu.add_fast_flags(environ) == ()  # idempotent


_META_GRADIENT = r"""
import json, os, sys
from experiments import xla_cpu
added = ()
if sys.argv[1] == "fast":
  added = xla_cpu.add_fast_flags()
elif sys.argv[1] == "all":  # whatever this CPU has: XLA must accept every flag
  added = xla_cpu.FAST_FLAGS
  os.environ["XLA_FLAGS"] = " ".join(added)
import jax, jax.numpy as jnp
from jmeta import testing
model = testing.tiny_conv(conv_impl="native")
params = model.init(jax.random.key(0))
tasks = testing.fake_tasks(jax.random.key(1), num_tasks=2)

def task_loss(params, task):
  def loss(params, images, labels):
    return jnp.mean(jnp.square(model.apply(params, images) - labels[:, None]))
  grads = jax.grad(loss)(params, task.support, task.support_labels)
  adapted = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
  return loss(adapted, task.query, task.query_labels)

meta_loss = lambda p: jnp.mean(jax.vmap(task_loss, in_axes=(None, 0))(p, tasks))
value, grads = jax.jit(jax.value_and_grad(meta_loss))(params)
print(json.dumps({"added": list(added), "value": float(value),
                  "grads": [jnp.ravel(g).tolist() for g in jax.tree.leaves(grads)]}))
"""


def _run(mode):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, "-c", _META_GRADIENT, mode], env=env,
                          capture_output=True, text=True, timeout=300, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_xla_accepts_the_flags_and_the_meta_gradient_is_unchanged():
  fast, every_flag, default = _run("fast"), _run("all"), _run("default")
  assert fast["added"] == list(xla_cpu.fast_flags({}, jaxlib.__version__))
  assert every_flag["added"] == list(xla_cpu.FAST_FLAGS)
  scale = max(max(abs(x) for x in g) for g in default["grads"])
  assert scale > 1e-4
  for flagged in (fast, every_flag):
    np.testing.assert_allclose(flagged["value"], default["value"], rtol=1e-5)
    for flagged_grad, default_grad in zip(flagged["grads"], default["grads"]):
      np.testing.assert_allclose(flagged_grad, default_grad, rtol=1e-4, atol=1e-5 * scale)
