"""jmeta/models/winograd_cpu.py: the fused C++ Winograd F(4×4, 3×3) kernels equal the direct 3×3
'SAME' convolution and its kernel gradient to F(4×4, 3×3)'s float32 error (float64 reference),
per group, at odd and oblong sizes, block-boundary tile counts and channel counts that are not
multiples of the 64-column register panel; `layers.py` lowers float32 convolutions to them on
CPU; bad operands are refused early; a failed build falls back to the XLA form."""
import os
import pathlib
import subprocess
import sys
import textwrap
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.models import layers
from jmeta.models import winograd
from jmeta.models import winograd_cpu

_REPO = pathlib.Path(__file__).resolve().parents[1]
_F32_EPS = float(np.finfo(np.float32).eps)

_SHAPES = [  # (images, height, width, in channels, out channels)
    (5, 14, 14, 64, 64),    # Conv4's support set at block 2: 80 tiles, blocks of 18 and 48
    (75, 7, 7, 64, 64),     # the query at block 3: 300 tiles
    (3, 7, 7, 16, 48),      # the last tile row and column hang over the edge
    (2, 9, 13, 32, 80),     # oblong; 80 columns = one 64-column panel + one 16-column one
    (1, 6, 6, 16, 16),      # one image, 4 tiles: fewer rows than one register panel
    (37, 5, 11, 48, 32),    # 111 tiles: neither block size divides it
]


def _direct_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _operands(shape, groups=()):
  images, height, width, channels, out_channels = shape
  keys = jax.random.split(jax.random.key(sum(shape) + len(groups)), 3)
  x = jax.random.normal(keys[0], groups + (images, height, width, channels), jnp.float32)
  kernel = jax.random.normal(keys[1], groups + (3, 3, channels, out_channels), jnp.float32)
  kernel = kernel / np.float32(3 * np.sqrt(channels))  # unit-variance outputs
  cotangent = jax.random.normal(keys[2], groups + (images, height, width, out_channels),
                                jnp.float32)
  return x, kernel, cotangent


def _exact(x, kernel, cotangent):
  """The float64 direct convolution and its kernel gradient."""
  with jax.enable_x64(True):
    x64, kernel64, cotangent64 = (np.asarray(a, np.float64) for a in (x, kernel, cotangent))
    out = np.asarray(_direct_conv(x64, kernel64))
    grad = np.asarray(jax.vjp(lambda k: _direct_conv(x64, k), kernel64)[1](cotangent64)[0])
  return out, grad


def _error(value, reference):
  return np.max(np.abs(np.asarray(value, np.float64) - reference)) / np.max(np.abs(reference))


@pytest.fixture(scope="module", autouse=True)
def kernels_built():
  if not winograd_cpu.enabled():
    pytest.fail("winograd_cpu's kernels did not build (see the logged warning); they need a C++ "
                "compiler ($CXX or c++)")


@pytest.mark.parametrize("shape", _SHAPES)
def test_fused_kernels_equal_the_direct_convolution_and_its_weight_gradient(shape):
  """Within 100 float32 epsilons of the largest output (F(4×4, 3×3)'s float32 error at Conv4's
  shapes was 5.5e-6 to 8e-6, ~46-67 epsilons: tests/winograd_test.py), and as close as XLA's
  F(4×4, 3×3) is within 2×. A wrong tap, tile or channel is off by O(1)."""
  x, kernel, cotangent = _operands(shape)
  exact, exact_grad = _exact(x, kernel, cotangent)
  out = jax.jit(winograd_cpu.conv3x3)(x, kernel)
  grad = jax.jit(winograd_cpu.conv3x3_weight_grad)(x, cotangent)
  assert out.shape == exact.shape and grad.shape == exact_grad.shape
  xla_error = _error(winograd.conv3x3(x, kernel, output_tile=4), exact)
  xla_grad_error = _error(winograd.conv3x3_weight_grad(x, cotangent, output_tile=4), exact_grad)
  assert _error(out, exact) < max(2 * xla_error, 100 * _F32_EPS)
  assert _error(grad, exact_grad) < max(2 * xla_grad_error, 100 * _F32_EPS)


def test_grouped_operands_are_one_convolution_per_group():
  """x [G, N, H, W, C] with kernels [G, 3, 3, C, O]: group i's images with group i's kernel
  (bit-equal to calling the kernel on each group alone); fails if groups are mixed up."""
  x, kernel, cotangent = _operands((4, 7, 7, 32, 16), groups=(3,))
  out = winograd_cpu.conv3x3(x, kernel)
  grad = winograd_cpu.conv3x3_weight_grad(x, cotangent)
  for i in range(3):
    np.testing.assert_array_equal(out[i], winograd_cpu.conv3x3(x[i], kernel[i]))
    np.testing.assert_array_equal(grad[i], winograd_cpu.conv3x3_weight_grad(x[i], cotangent[i]))
  assert not np.allclose(out[0], winograd_cpu.conv3x3(x[0], kernel[1]), atol=1e-2)


def _custom_call_targets(fn, *args):
  text = jax.jit(fn).lower(*args).compile().as_text()
  return {target for target in ("jmeta_winograd_conv", "jmeta_winograd_weight_grad")
          if target in text}


def test_cpu_lowering_of_float32_convolutions_uses_the_fused_kernels():
  """A second-order gradient through `conv2d(impl="native")` at a Winograd shape compiles to
  the two custom calls and no `convolution`, and equals the XLA Winograd lowering's to float32
  rounding; off (`enabled` False) it has neither custom call; float64 keeps the XLA form."""
  x, kernel, _ = _operands((5, 14, 14, 64, 64))

  def meta_gradient():  # a new function each time: jit caches the lowering per function
    def loss(kernel, x):
      return jnp.mean(jnp.tanh(layers.conv2d(x, kernel, impl="native")) ** 2)

    def second_order(kernel, x):
      return loss(kernel - 0.1 * jax.grad(loss)(kernel, x), x)
    return jax.grad(second_order)

  assert _custom_call_targets(meta_gradient(), kernel, x) == {"jmeta_winograd_conv",
                                                              "jmeta_winograd_weight_grad"}
  assert " convolution(" not in jax.jit(meta_gradient()).lower(kernel, x).compile().as_text()
  fused = jax.jit(meta_gradient())(kernel, x)
  with mock.patch.object(winograd_cpu, "enabled", lambda: False):
    assert not _custom_call_targets(meta_gradient(), kernel, x)
    xla = jax.jit(meta_gradient())(kernel, x)
  xla = np.asarray(xla, np.float64)
  assert np.max(np.abs(fused - xla)) < 1e-4 * np.max(np.abs(xla))
  with jax.enable_x64(True):
    assert not _custom_call_targets(meta_gradient(), kernel.astype(jnp.float64),
                                    x.astype(jnp.float64))


@pytest.mark.parametrize("channels, out_channels, applies", [
    (64, 64, True), (16, 160, True), (8, 64, False), (64, 40, False)])
def test_applies_needs_channel_counts_divisible_by_16(channels, out_channels, applies):
  x = jnp.zeros((2, 14, 14, channels), jnp.float32)
  assert winograd_cpu.applies(x, out_channels) == applies
  assert not winograd_cpu.applies(x.astype(jnp.bfloat16), out_channels)
  assert not winograd_cpu.applies(jnp.zeros((2, 6, 6, channels), jnp.float32), out_channels)


def test_bad_operands_are_refused_before_the_kernel_runs():
  x, kernel, cotangent = _operands((2, 7, 7, 16, 16))
  with pytest.raises(ValueError, match="float32"):
    with jax.enable_x64(True):
      winograd_cpu.conv3x3(x.astype(jnp.float64), kernel.astype(jnp.float64))
  with pytest.raises(ValueError, match="divisible by 16"):
    winograd_cpu.conv3x3(jnp.zeros((2, 7, 7, 8)), jnp.zeros((3, 3, 8, 16)))
  with pytest.raises(ValueError, match=r"kernel must be \(3, 3, 16, 16\)"):
    winograd_cpu.conv3x3(x, jnp.zeros((5, 5, 16, 16)))
  with pytest.raises(ValueError, match=r"g must be \(2, 7, 7, 16\)"):
    winograd_cpu.conv3x3_weight_grad(x, cotangent[:1])


def _run_python(code, **env):
  return subprocess.run(
      [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", **env), cwd=_REPO)


_FALLBACK_CHECK = """
    import jax, jax.numpy as jnp, numpy as np
    from jmeta.models import layers, winograd, winograd_cpu
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 64))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 64, 64)) / 24
    text = jax.jit(lambda x, k: layers.conv2d(x, k, impl="native")).lower(x, kernel).compile().as_text()
    out = layers.conv2d(x, kernel, impl="native")
    np.testing.assert_allclose(out, winograd.conv3x3(x, kernel, output_tile=4), rtol=1e-4, atol=1e-4)
    print("enabled", winograd_cpu.enabled(), "custom call", "jmeta_winograd_conv" in text)
"""


def test_a_failed_build_warns_and_falls_back_to_the_xla_form(tmp_path):
  """With a compiler that fails (and an empty cache), one warning names the failure and the
  convolution still runs, as XLA operations, with the same values."""
  result = _run_python(_FALLBACK_CHECK, CXX="false", JMETA_KERNEL_CACHE=str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert "enabled False custom call False" in result.stdout
  assert result.stderr.count("building") == 1 and "failed" in result.stderr, result.stderr


def test_environment_variable_turns_the_kernels_off():
  result = _run_python(_FALLBACK_CHECK, JMETA_CPU_KERNELS="0")
  assert result.returncode == 0, result.stderr
  assert "enabled False custom call False" in result.stdout
  result = _run_python(_FALLBACK_CHECK)
  assert result.returncode == 0, result.stderr
  assert "enabled True custom call True" in result.stdout


def test_the_library_is_built_once_per_source_and_machine(tmp_path, monkeypatch):
  """A second build finds the cached library (same path, not rewritten); an edited source gets
  a new one."""
  monkeypatch.setenv(winograd_cpu.CACHE_ENV, str(tmp_path))
  compiler = winograd_cpu._compiler()  # pylint: disable=protected-access
  first = winograd_cpu._build(compiler)  # pylint: disable=protected-access
  built_at = os.stat(first).st_mtime_ns
  assert winograd_cpu._build(compiler) == first  # pylint: disable=protected-access
  assert os.stat(first).st_mtime_ns == built_at
  edited = tmp_path / "edited.cc"
  edited.write_text(pathlib.Path(winograd_cpu.SOURCE).read_text() + "\n// edited\n")
  monkeypatch.setattr(winograd_cpu, "SOURCE", str(edited))
  assert winograd_cpu._build(compiler) != first  # pylint: disable=protected-access
  assert sorted(p.suffix for p in tmp_path.iterdir()) == [".cc", ".so", ".so"]
