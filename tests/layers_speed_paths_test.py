"""Every fast path in jmeta/models/layers.py computes what the plain path computes.

The plain paths are `lax.conv_general_dilated` with JAX's own autodiff, `x.max` pooling by
`reduce_window` and the two-pass batch-norm formula. The fast paths must agree in values and in
first-, second- and third-order and forward-mode derivatives (MAML differentiates through the
inner gradients; `jax.jvp(jax.grad(...))` is a Hessian-vector product), under `vmap` with shared
and per-task kernels, inside `lax.scan`/`lax.map`, and on the peer-harness workload itself.
Derivative checks run in float64 so that "equal" means equal up to rounding.
"""
import contextlib
import functools
import os
import pathlib
import re
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta import classifiers
from jmeta import inner
from jmeta import meta
from jmeta import testing
from jmeta import train
from jmeta.models import conv4
from jmeta.models import layers

_REPO = pathlib.Path(__file__).resolve().parents[1]
_PEERS = pathlib.Path(os.environ.get("JMETA_PEERS_DIR", _REPO.parent / "shared" / "peers"))

# Compiled at the suite's LLVM optimisation level 0 (conftest.py): XLA's HLO passes, which
# rewrite the convolutions, run either way. Only the tests that run the peer workload's
# full-size steps, slow without LLVM's optimisation, are marked `optimized_xla`.


def _reference_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv(impl):
  return lambda x, kernel: layers.conv2d(x, kernel, impl=impl)


def _close(actual, desired, rtol=1e-9, atol=1e-12):
  testing.assert_trees_allclose(actual, desired, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------
# Convolutions.

_SHAPES = [  # (B, H, W, C, O, kernel size)
    (3, 7, 5, 4, 5, 3),
    (2, 6, 9, 2, 4, 5),
    (2, 1, 1, 3, 2, 3),    # Conv4's last block on 28×28 inputs
    (2, 4, 6, 1, 3, 3),    # one input channel, as Conv4's first block
    (12, 5, 4, 3, 4, 3),   # more images than one chunk of the CPU weight gradient
    (2, 6, 7, 64, 65, 3),  # enough channels and pixels for Winograd on CPU
]


@pytest.mark.parametrize("impl", ["native", "matmul"])
@pytest.mark.parametrize("shape", _SHAPES)
def test_conv_equals_xla_in_values_and_derivatives_of_every_order(impl, shape):
  batch, height, width, channels, out_channels, size = shape
  keys = jax.random.split(jax.random.key(sum(shape)), 4)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], (batch, height, width, channels), jnp.float64)
    kernel = jax.random.normal(keys[1], (size, size, channels, out_channels), jnp.float64)
    weights = jax.random.normal(keys[2], (batch, height, width, out_channels), jnp.float64)
    direction = jax.random.normal(keys[3], kernel.shape, jnp.float64)

    def derivatives(conv):
      def loss(x, kernel):
        return jnp.sum(jnp.tanh(conv(x, kernel)) * weights)

      def meta_loss(x, kernel):  # a MAML-like objective: differentiate through a gradient
        grad_x, grad_kernel = jax.grad(loss, argnums=(0, 1))(x, kernel)
        return jnp.sum(jnp.sin(grad_x)) + loss(x, kernel - 0.1 * grad_kernel)

      def third(kernel):
        return jnp.sum(jax.grad(lambda k: jnp.sum(jax.grad(loss, argnums=1)(x, k) ** 2))(kernel)
                       ** 2)

      return {
          "value": conv(x, kernel),
          "grad": jax.grad(loss, argnums=(0, 1))(x, kernel),
          "second": jax.grad(meta_loss, argnums=(0, 1))(x, kernel),
          "third": jax.grad(third)(kernel),
          "jvp": jax.jvp(conv, (x, kernel), (0.3 * x, direction))[1],
          "hvp": jax.jvp(lambda k: jax.grad(loss, argnums=1)(x, k), (kernel,), (direction,))[1],
          "jit_second": jax.jit(jax.grad(meta_loss, argnums=(0, 1)))(x, kernel),
      }

    fast, reference = derivatives(_conv(impl)), derivatives(_reference_conv)
    # Winograd F(4×4, 3×3)'s transforms (factors up to 8 and 1/24) round more than the direct
    # form: one entry of the jitted second-order gradient was 1.2e-9 off, relative, in float64.
    rtol = 1e-8 if min(channels, out_channels) >= layers.WINOGRAD_MIN_CHANNELS else 1e-9
    for name in reference:
      try:
        _close(fast[name], reference[name], rtol=rtol)
      except AssertionError as error:
        raise AssertionError(f"impl={impl} {name} differs from lax.conv_general_dilated") from error


def _maml_task_loss(conv):
  """A task's loss after one gradient step on its kernel: its gradient is second order."""
  def task_loss(x, kernel, weights):
    inner_grad = jax.grad(lambda k: jnp.sum(jnp.tanh(conv(x, k)) * weights))(kernel)
    return jnp.sum(jnp.tanh(conv(x, kernel - 0.2 * inner_grad)) ** 2)
  return task_loss


@pytest.mark.parametrize("impl", ["native", "matmul"])
@pytest.mark.parametrize("kernels_per_task", [True, False])
def test_conv_under_vmap_equals_xla_with_second_order_gradients(impl, kernels_per_task):
  """grad(vmap(grad(...))), the shape of a MAML meta-gradient, with per-task or shared kernels."""
  keys = jax.random.split(jax.random.key(7), 3)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], (3, 4, 7, 6, 5), jnp.float64)
    kernel = jax.random.normal(keys[1], (3, 3, 3, 5, 6) if kernels_per_task else (3, 3, 5, 6),
                               jnp.float64)
    weights = jax.random.normal(keys[2], (3, 4, 7, 6, 6), jnp.float64)
    kernel_axis = 0 if kernels_per_task else None

    def meta_gradient(conv):
      per_task = jax.vmap(_maml_task_loss(conv), in_axes=(0, kernel_axis, 0))
      return jax.jit(jax.value_and_grad(lambda k: jnp.sum(per_task(x, k, weights))))(kernel)

    _close(meta_gradient(_conv(impl)), meta_gradient(_reference_conv))


@pytest.mark.parametrize("nesting", ["tasks", "tasks_of_tasks", "shared_inside_tasks"])
def test_native_conv_under_vmap_with_winograd_sized_kernels_equals_xla(nesting):
  """Per-task kernels bind the grouped primitives; with 64 channels on ≥ 6×6 images the CPU runs
  them as Winograd with every task's tiles in one matmul per position. A second vmap inside
  merges its axis into the group axis (per-item kernels) or into the images (a shared kernel)."""
  keys = jax.random.split(jax.random.key(11), 3)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], (2, 2, 2, 6, 7, 64), jnp.float64)
    kernel = jax.random.normal(keys[1], (2, 2, 3, 3, 64, 64), jnp.float64) / 24
    weights = jax.random.normal(keys[2], (2, 2, 2, 6, 7, 64), jnp.float64)

    def meta_gradient(conv):
      task_loss = _maml_task_loss(conv)
      if nesting == "tasks":
        per_task, images, kernels, task_weights = (
            jax.vmap(task_loss), x[0], kernel[0], weights[0])
      elif nesting == "tasks_of_tasks":
        per_task, images, kernels, task_weights = (
            jax.vmap(jax.vmap(task_loss)), x, kernel, weights)
      else:  # an inner vmap over image sets that share their task's kernel
        per_task, images, kernels, task_weights = (
            jax.vmap(jax.vmap(task_loss, in_axes=(0, None, 0))), x, kernel[:, 0], weights)
      loss = lambda k: jnp.sum(per_task(images, k, task_weights))
      return jax.jit(jax.value_and_grad(loss))(kernels)

    # Entries reach ~100; Winograd F(4×4, 3×3) rounds at ~1e-13 of that in float64.
    _close(meta_gradient(_conv("native")), meta_gradient(_reference_conv), rtol=1e-8, atol=1e-9)


def _tiny_maml_step(conv_impl, *, task_chunk_size=None, remat=False):
  """The MAML meta-gradient of a 2-block Conv4 (lax.scan inner loop, lax.map over chunks)."""
  model = testing.tiny_conv(conv_impl=conv_impl)
  adapter = inner.head(model.apply, step_size=0.3)
  objective = meta.maml(adapter, classifiers.linear_head(model.apply), num_inner_steps=3,
                        remat=remat, extra_metrics=False)
  mapped = train.map_tasks(objective, task_chunk_size=task_chunk_size)

  def meta_loss(meta_params, keys, tasks):
    return jnp.mean(mapped(meta_params, keys, tasks)[0])

  return model, adapter, jax.jit(jax.value_and_grad(meta_loss))


@pytest.mark.parametrize("task_chunk_size,remat", [(None, False), (1, False), (2, True)])
def test_conv4_maml_meta_gradient_native_equals_xla(task_chunk_size, remat):
  with jax.enable_x64(True):
    tasks = testing.fake_tasks(jax.random.key(1), num_tasks=4, dtype=jnp.float64)
    keys = jax.random.split(jax.random.key(2), 4)
    results = []
    for impl in ("native", "xla"):
      model, adapter, step = _tiny_maml_step(impl, task_chunk_size=task_chunk_size, remat=remat)
      params = {"encoder": model.init(jax.random.key(0)),
                "head": inner.init_head(jax.random.key(3), model.embedding_dim, 3)}
      results.append(step(testing.to_float64(adapter.init_meta(params)), keys, tasks))
    _close(results[0], results[1])


def test_native_convolutions_stay_canonical_inside_loops():
  """The point of "native": every convolution XLA compiles for a second-order MAML step with a
  `lax.scan` inner loop and `lax.map` over tasks has NHWC/HWIO dimension numbers, no kernel
  reversal and no feature groups, the form XLA:CPU runs on its fast kernel. Plain autodiff
  (impl="xla") does not (checked too, so this test notices if XLA starts handling it)."""
  tasks = testing.fake_tasks(jax.random.key(1), num_tasks=2)
  keys = jax.random.split(jax.random.key(2), 2)

  def compiled_convolutions(impl, chunk):
    model, adapter, step = _tiny_maml_step(impl, task_chunk_size=chunk)
    params = {"encoder": model.init(jax.random.key(0)),
              "head": inner.init_head(jax.random.key(3), model.embedding_dim, 3)}
    text = step.lower(adapter.init_meta(params), keys, tasks).compile().as_text()
    return [line for line in text.splitlines() if " convolution(" in line]

  def canonical(line):
    return ("dim_labels=b01f_01io->b01f" in line and "reversal" not in line
            and "feature_group_count" not in line)

  for chunk in (None, 1):
    convolutions = compiled_convolutions("native", chunk)
    assert convolutions, "no convolution compiled"
    bad = [re.sub(r"metadata=.*", "", line) for line in convolutions if not canonical(line)]
    assert not bad, f"task_chunk_size={chunk}: non-canonical convolutions:\n" + "\n".join(bad)
  assert not all(canonical(line) for line in compiled_convolutions("xla", 1))


@pytest.mark.parametrize("images", [5, 12, 15])
def test_cpu_weight_gradient_sums_chunks_of_images(images):
  """On CPU the weight gradient compiles to one convolution per chunk of images, and their sum
  equals the kernel gradient of `lax.conv_general_dilated` (float64)."""
  keys = jax.random.split(jax.random.key(images), 2)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], (images, 6, 5, 3), jnp.float64)
    cotangent = jax.random.normal(keys[1], (images, 6, 5, 4), jnp.float64)
    kernel = jnp.zeros((3, 3, 3, 4), jnp.float64)

    def kernel_gradient(conv):
      return jax.jit(lambda x, g: jax.vjp(lambda k: conv(x, k), kernel)[1](g)[0])

    native = kernel_gradient(_conv("native"))
    _close(native(x, cotangent), kernel_gradient(_reference_conv)(x, cotangent))
    text = native.lower(x, cotangent).compile().as_text()
  chunks = -(-images // layers.CPU_WEIGHT_GRAD_IMAGES_PER_CHUNK)
  assert sum(" convolution(" in line for line in text.splitlines()) == chunks


@pytest.mark.parametrize("size", [(3, 3), (5, 3)])
def test_cpu_weight_gradient_of_one_input_channel_is_one_matmul(size):
  """A one-channel input's weight gradient (Conv4's first block) compiles to a matmul of shifted
  input copies, no convolution and no transpose of the cotangent, and equals the kernel
  gradient of `lax.conv_general_dilated` to every order (float64)."""
  keys = jax.random.split(jax.random.key(size[0]), 3)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], (12, 6, 5, 1), jnp.float64)
    cotangent = jax.random.normal(keys[1], (12, 6, 5, 4), jnp.float64)
    kernel = jax.random.normal(keys[2], size + (1, 4), jnp.float64)

    def kernel_gradient(conv):
      return jax.jit(lambda x, g, k: jax.vjp(lambda k: conv(x, k), k)[1](g)[0])

    def meta_gradient(conv):  # differentiates through the weight gradient: its transposes
      def inner_loss(k):
        return jnp.sum(jnp.tanh(conv(x, k)) * cotangent)
      return jax.jit(jax.grad(lambda k: inner_loss(k - 0.1 * jax.grad(inner_loss)(k))))

    native = kernel_gradient(_conv("native"))
    _close(native(x, cotangent, kernel), kernel_gradient(_reference_conv)(x, cotangent, kernel))
    _close(meta_gradient(_conv("native"))(kernel), meta_gradient(_reference_conv)(kernel))
    text = native.lower(x, cotangent, kernel).compile().as_text()
  assert not any(" convolution(" in line for line in text.splitlines())
  assert sum(" dot(" in line for line in text.splitlines()) == 1


@pytest.mark.parametrize("size", [(3, 3), (5, 3)])
@pytest.mark.parametrize("kernels_per_task", [False, True])
def test_cpu_convolution_of_one_input_channel_is_multiply_adds(size, kernels_per_task,
                                                               monkeypatch):
  """With `layers.ONE_CHANNEL_MULTIPLY_ADDS` (off by default since session 24), a one-channel
  input's convolution (Conv4's first block) compiles to broadcast multiply-adds of the shifted
  input, no convolution, alone and vmapped with per-task kernels (the grouped primitive), and
  equals `lax.conv_general_dilated` with the pooling that follows it, to second order
  (float64)."""
  monkeypatch.setattr(layers, "ONE_CHANNEL_MULTIPLY_ADDS", True)
  keys = jax.random.split(jax.random.key(size[0] + kernels_per_task), 3)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], (2, 5, 6, 5, 1), jnp.float64)
    kernel = jax.random.normal(keys[1], (2,) * kernels_per_task + size + (1, 4), jnp.float64)
    weights = jax.random.normal(keys[2], (2, 5, 3, 2, 4), jnp.float64)

    def meta_gradient(conv):
      def task_loss(x, kernel, weights):
        loss = lambda k: jnp.sum(jnp.tanh(layers.max_pool2x2(conv(x, k))) * weights)
        return loss(kernel - 0.1 * jax.grad(loss)(kernel))
      per_task = jax.vmap(task_loss, in_axes=(0, 0 if kernels_per_task else None, 0))
      return jax.jit(jax.value_and_grad(lambda k: jnp.sum(per_task(x, k, weights))))

    native = meta_gradient(_conv("native"))
    _close(native(kernel), meta_gradient(_reference_conv)(kernel))
    text = native.lower(kernel).compile().as_text()
  assert not any(" convolution(" in line for line in text.splitlines())


@pytest.mark.parametrize("shape, winograd", [
    ((3, 6, 7, 64, 64), True),
    ((3, 5, 7, 64, 64), False),   # too few pixels
    ((3, 6, 7, 63, 64), False),   # too few input channels
    ((3, 6, 7, 64, 63), False),   # too few output channels
])
def test_cpu_lowers_3x3_convolutions_with_enough_channels_and_pixels_to_winograd(shape, winograd):
  """Where `_winograd_applies`, the compiled convolution and weight gradient have no convolution
  (Winograd's matmuls instead), elsewhere they have; the values equal lax's either way."""
  images, height, width, channels, out_channels = shape
  keys = jax.random.split(jax.random.key(channels + out_channels), 3)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], (images, height, width, channels), jnp.float64)
    kernel = jax.random.normal(keys[1], (3, 3, channels, out_channels), jnp.float64)
    cotangent = jax.random.normal(keys[2], (images, height, width, out_channels), jnp.float64)

    def conv_and_kernel_gradient(conv):
      def both(x, kernel, cotangent):
        value, vjp = jax.vjp(lambda k: conv(x, k), kernel)
        return value, vjp(cotangent)[0]
      return jax.jit(both)

    native = conv_and_kernel_gradient(_conv("native"))
    _close(native(x, kernel, cotangent),
           conv_and_kernel_gradient(_reference_conv)(x, kernel, cotangent))
    lines = native.lower(x, kernel, cotangent).compile().as_text().splitlines()
  convolutions = sum(" convolution(" in line for line in lines)
  if winograd:
    assert convolutions == 0 and sum(" dot(" in line for line in lines) == 2
  else:
    assert convolutions >= 2


def test_conv2d_validates_arguments():
  x, kernel = jnp.zeros((1, 4, 4, 2)), jnp.zeros((2, 2, 2, 3))
  with pytest.raises(ValueError, match="odd kernel"):
    layers.conv2d(x, kernel, impl="native")
  with pytest.raises(ValueError, match="impl='fft'"):
    layers.conv2d(x, jnp.zeros((3, 3, 2, 3)), impl="fft")


# ------------------------------------------------------------------------------------------------
# Max-pool.


def _argmax_pool(x):
  """The previous implementation: stack the windows, route by jnp.argmax (first max)."""
  batch, height, width, channels = x.shape
  h, w = height // 2, width // 2
  x = x[:, :2 * h, :2 * w, :].reshape(batch, h, 2, w, 2, channels)
  windows = jnp.stack([x[:, :, 0, :, 0], x[:, :, 0, :, 1], x[:, :, 1, :, 0], x[:, :, 1, :, 1]],
                      axis=-1)
  chosen = jnp.argmax(windows, axis=-1)[..., None] == jnp.arange(4)
  return jnp.sum(jnp.where(chosen, windows, 0), axis=-1)


@pytest.mark.parametrize("shape", [(2, 7, 5, 3), (1, 6, 8, 4)])
def test_max_pool_equals_reduce_window_and_routes_like_argmax(shape):
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(4), shape, jnp.float64)
    # ties, including all-equal windows and ReLU zeros, must go to the first maximum
    x = x.at[:, 0:2, 0:2, 0].set(1.5).at[:, 2:4, 0:2, 1].set(0.0)
    x = x.at[0, 0, 1, 2].set(x[0, 0, 0, 2])
    weights = jax.random.normal(jax.random.key(5), (shape[0], shape[1] // 2, shape[2] // 2,
                                                    shape[3]), jnp.float64)
    reference = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                      "VALID")
    np.testing.assert_array_equal(layers.max_pool2x2(x), reference)

    def derivatives(pool):
      loss = lambda x: jnp.sum(jnp.sin(pool(x)) * weights)
      second = lambda x: jnp.sum(jax.grad(loss)(x) ** 2 * x)
      return (jax.grad(loss)(x), jax.grad(second)(x), jax.jit(jax.grad(second))(x),
              jax.jvp(jax.grad(loss), (x,), (x ** 2,))[1])

    _close(derivatives(layers.max_pool2x2), derivatives(_argmax_pool))


def test_max_pool_derivatives_route_through_a_mask_not_pads():
  """The fast path: first- and second-order derivatives scatter the pooled cotangent with the
  one-hot mask. Autodiff of strided window slices transposes each slice into a `pad` (4 per
  pool in the gradient, 12 in the second-order one), which XLA:CPU ran slowly."""
  x = jax.random.normal(jax.random.key(6), (2, 8, 8, 3))
  loss = lambda x: jnp.sum(jnp.sin(layers.max_pool2x2(x)))
  second = lambda x: jnp.sum(jax.grad(loss)(x) ** 2 * x)
  for derivative, arg in ((jax.grad(loss), x), (jax.grad(second), x),
                          (jax.vmap(jax.grad(second)), jnp.stack([x, -x]))):
    assert jax.jit(derivative).lower(arg).as_text().count("stablehlo.pad") == 0


def test_max_pool_propagates_nan():
  x = jnp.zeros((1, 2, 2, 2)).at[0, 1, 1, 0].set(jnp.nan).at[0, 0, 0, 1].set(jnp.nan)
  out = layers.max_pool2x2(x)
  assert np.all(np.isnan(out))


# ------------------------------------------------------------------------------------------------
# Batch norm.


def _two_pass_batch_norm(x, scale, offset, eps=1e-5):
  mean = x.mean(axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + offset


def test_batch_norm_equals_two_pass_formula_with_derivatives():
  keys = jax.random.split(jax.random.key(6), 4)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], (3, 4, 5, 6), jnp.float64) * 3.0 + 1.0
    scale = jax.random.normal(keys[1], (6,), jnp.float64)
    offset = jax.random.normal(keys[2], (6,), jnp.float64)
    weights = jax.random.normal(keys[3], x.shape, jnp.float64)

    def derivatives(norm):
      loss = lambda x, s, o: jnp.sum(jnp.tanh(norm(x, s, o)) * weights)
      second = lambda x, s, o: jnp.sum(jax.grad(loss)(x, s, o) ** 2) + loss(x, s * 1.1, o)
      return (norm(x, scale, offset), jax.grad(loss, argnums=(0, 1, 2))(x, scale, offset),
              jax.grad(second, argnums=(0, 1, 2))(x, scale, offset),
              jax.jvp(lambda x: jax.grad(loss)(x, scale, offset), (x,), (weights,))[1])

    _close(derivatives(lambda x, s, o: layers.normalize(x, s, o, mode="batch")),
           derivatives(_two_pass_batch_norm), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mean,std", [(1e3, 1.0), (-50.0, 1e-2), (0.0, 1e-3)])
def test_batch_norm_float32_is_as_accurate_as_two_pass(mean, std):
  """Large means relative to the spread: the one-pass statistics must not cancel catastrophically."""
  x64 = np.asarray(jax.random.normal(jax.random.key(8), (5, 14, 14, 8)), np.float64) * std + mean
  x64[1:] += np.linspace(0, 3 * std, 4)[:, None, None, None]  # examples differ a bit
  reference = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
  x = jnp.asarray(x64, jnp.float32)
  ones, zeros = jnp.ones(8), jnp.zeros(8)
  fast = np.asarray(layers.normalize(x, ones, zeros, mode="batch"), np.float64)
  plain = np.asarray(_two_pass_batch_norm(x, ones, zeros), np.float64)
  assert np.max(np.abs(fast - reference)) <= 2 * np.max(np.abs(plain - reference)) + 1e-6


def _unfused_batch_norm_relu_max_pool(x, scale, offset):
  return layers.max_pool2x2(jax.nn.relu(layers.normalize(x, scale, offset, mode="batch")))


@pytest.mark.parametrize("shape", [(3, 6, 8, 4), (2, 7, 5, 3)])
def test_batch_norm_relu_max_pool_equals_the_layers_in_order(shape):
  """Pooling first (of y or −y by the sign of each channel's factor) is the same function with
  the same derivatives, to third order and in forward mode, under jit and vmap: negative and
  positive scales, ReLU zeros, tied windows, odd sizes (dropped rows still count in the
  statistics)."""
  keys = jax.random.split(jax.random.key(11), 5)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], shape, jnp.float64) * 2.0 + 0.5
    x = x.at[:, 0:2, 0:2, 0].set(1.5).at[0, 2, 2, 1].set(x[0, 2, 3, 1])  # ties
    channels = shape[-1]
    scale = jax.random.normal(keys[1], (channels,), jnp.float64)
    scale = scale.at[0].set(-0.7).at[1].set(1.3)  # both signs, whatever the key
    offset = jax.random.normal(keys[2], (channels,), jnp.float64).at[0].set(0.8)
    pooled_shape = (shape[0], shape[1] // 2, shape[2] // 2, channels)
    weights = jax.random.normal(keys[3], pooled_shape, jnp.float64)
    fused = layers.batch_norm_relu_max_pool(x, scale, offset)
    unfused = _unfused_batch_norm_relu_max_pool(x, scale, offset)
    assert float(jnp.mean(unfused == 0)) > 0.1  # ReLU zeros are exercised
    np.testing.assert_allclose(fused, unfused, rtol=1e-12, atol=1e-12)

    def derivatives(layer):
      loss = lambda x, s, o: jnp.sum(jnp.sin(layer(x, s, o)) * weights)
      grad = jax.grad(loss, argnums=(0, 1, 2))
      second = lambda x, s, o: sum(jnp.sum(g ** 2) for g in grad(x, s, o)) + loss(x, s, o)
      third = lambda x, s, o: jnp.sum(jax.grad(second, argnums=1)(x, s, o) ** 2)
      batched = jax.vmap(jax.grad(second, argnums=(0, 1)), in_axes=(0, None, None))
      # Eager up to second order (and jitted, for jit against eager), third order jitted.
      return (grad(x, scale, offset),
              jax.grad(second, argnums=(0, 1, 2))(x, scale, offset),
              jax.jit(jax.grad(second, argnums=(0, 1, 2)))(x, scale, offset),
              jax.jit(jax.grad(third, argnums=(0, 1)))(x, scale, offset),
              jax.jit(lambda x: jax.jvp(lambda x: grad(x, scale, offset), (x,), (x ** 2,))[1])(x),
              jax.jit(batched)(jnp.stack([x, 0.5 * x - 1.0]), scale, offset))

    _close(derivatives(layers.batch_norm_relu_max_pool),
           derivatives(_unfused_batch_norm_relu_max_pool), rtol=1e-8, atol=1e-10)


def _unfused_conv_batch_norm_relu_max_pool(x, kernel, bias, scale, offset, impl):
  return _unfused_batch_norm_relu_max_pool(layers.conv2d(x, kernel, bias, impl=impl), scale,
                                           offset)


@pytest.mark.parametrize("impl,x_shape,kernel_shape,with_bias", [
    ("native", (4, 6, 6, 1), (3, 3, 1, 5), False),  # statistics from the patches (K = 9)
    ("matmul", (4, 6, 6, 1), (3, 3, 1, 5), False),
    ("xla", (4, 6, 6, 1), (3, 3, 1, 5), False),
    ("native", (3, 7, 5, 1), (3, 3, 1, 4), False),  # odd sizes: dropped rows still count
    ("native", (4, 6, 6, 3), (1, 1, 3, 4), False),  # K = 3 from three channels
    ("native", (4, 6, 6, 1), (3, 3, 1, 4), True),   # a bias: the statistics of the output
    ("native", (3, 6, 6, 2), (3, 3, 2, 4), False),  # K = 18: the statistics of the output
])
def test_conv_batch_norm_relu_max_pool_equals_the_layers_in_order(impl, x_shape, kernel_shape,
                                                                   with_bias):
  """Batch statistics from the input patches' mean and covariance are the same function as from
  the convolution's output, with the same derivatives in every argument (the images too), to
  third order and in forward mode, under jit and vmap, for each convolution impl (the
  statistics do not depend on it: the other impls run the first case only, to keep the suite
  short)."""
  keys = jax.random.split(jax.random.key(12), 6)
  with jax.enable_x64(True):
    x = jax.random.uniform(keys[0], x_shape, jnp.float64)
    kernel = jax.random.normal(keys[1], kernel_shape, jnp.float64)
    out_channels = kernel_shape[-1]
    bias = jax.random.normal(keys[2], (out_channels,), jnp.float64) if with_bias else None
    scale = jax.random.normal(keys[3], (out_channels,), jnp.float64).at[0].set(-0.7)
    offset = jax.random.normal(keys[4], (out_channels,), jnp.float64).at[0].set(0.8)
    pooled_shape = (x_shape[0], x_shape[1] // 2, x_shape[2] // 2, out_channels)
    weights = jax.random.normal(keys[5], pooled_shape, jnp.float64)
    fused = functools.partial(layers.conv_batch_norm_relu_max_pool, impl=impl)
    unfused = functools.partial(_unfused_conv_batch_norm_relu_max_pool, impl=impl)
    np.testing.assert_allclose(fused(x, kernel, bias, scale, offset),
                               unfused(x, kernel, bias, scale, offset), rtol=1e-12, atol=1e-12)

    def derivatives(layer):
      loss = lambda x, k, s: jnp.sum(jnp.sin(layer(x, k, bias, s, offset)) * weights)
      grad = jax.grad(loss, argnums=(0, 1, 2))
      second = lambda x, k, s: sum(jnp.sum(g ** 2) for g in grad(x, k, s)) + loss(x, k, s)
      third = lambda x, k, s: jnp.sum(jax.grad(second, argnums=1)(x, k, s) ** 2)
      batched = jax.vmap(jax.grad(second, argnums=(0, 1)), in_axes=(0, None, None))
      affine = lambda b, o: jnp.sum(jnp.sin(layer(x, kernel, b, scale, o)) * weights)
      # The first-order gradients run eagerly, the higher orders jitted: op by op, every native
      # convolution of a third-order derivative compiled on its own (~20 s per case).
      return (grad(x, kernel, scale),
              jax.grad(affine, argnums=(0, 1) if with_bias else 1)(bias, offset),
              jax.jit(jax.grad(second, argnums=(0, 1, 2)))(x, kernel, scale),
              jax.jit(jax.grad(third, argnums=(0, 1)))(x, kernel, scale),
              jax.jit(lambda k: jax.jvp(lambda k: grad(x, k, scale), (k,), (k ** 2,))[1])(kernel),
              jax.jit(batched)(jnp.stack([x, 0.5 * x + 0.25]), kernel, scale))

    _close(derivatives(fused), derivatives(unfused), rtol=1e-8, atol=1e-10)


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in its equations' parameters."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _equations(sub)


def test_conv_batch_norm_relu_max_pool_reads_the_output_only_to_pool():
  """With patch statistics, no reduction in the layer or its gradient runs over the [B, H, W, O]
  convolution output (the point of the layer); above the size limit, or with a bias, the
  output's own statistics are used."""
  scale, offset = jnp.ones(5), jnp.zeros(5)

  def output_reductions(x, kernel, bias=None):
    loss = lambda k, s: jnp.sum(layers.conv_batch_norm_relu_max_pool(x, k, bias, s, offset))
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(kernel, scale).jaxpr
    return [eqn for eqn in _equations(jaxpr) if eqn.primitive.name == "reduce_sum"
            and eqn.invars[0].aval.shape[:3] == (4, 8, 8)]

  assert not output_reductions(jnp.ones((4, 8, 8, 1)), jnp.ones((3, 3, 1, 5)))
  assert output_reductions(jnp.ones((4, 8, 8, 2)), jnp.ones((3, 3, 2, 5)))
  assert output_reductions(jnp.ones((4, 8, 8, 1)), jnp.ones((3, 3, 1, 5)), jnp.ones(5))


def test_conv_batch_norm_relu_max_pool_is_as_accurate_in_float32():
  """float32 embeddings of Omniglot-like first blocks (binary strokes, 75 images): statistics
  from the patches are at least as close to float64 as those from the output."""
  keys = jax.random.split(jax.random.key(13), 4)
  images = (jax.random.uniform(keys[0], (75, 28, 28, 1)) > 0.8).astype(jnp.float32)
  kernel = layers.uniform_init(keys[1], (3, 3, 1, 64), fan_in=9)
  scale = 1.0 + 0.1 * jax.random.normal(keys[2], (64,))
  offset = 0.1 * jax.random.normal(keys[3], (64,))
  args = (images, kernel, None, scale, offset)
  with jax.enable_x64(True):
    reference = np.asarray(layers.conv_batch_norm_relu_max_pool(
        *[None if a is None else jnp.asarray(a, jnp.float64) for a in args]))
  fused = np.asarray(layers.conv_batch_norm_relu_max_pool(*args), np.float64)
  unfused = np.asarray(_unfused_conv_batch_norm_relu_max_pool(*args, impl="native"), np.float64)
  error = lambda a: np.max(np.abs(a - reference))
  assert error(fused) <= 2 * error(unfused) + 1e-6, (error(fused), error(unfused))


def test_conv4_with_batch_norm_is_conv_norm_relu_pool_in_that_order():
  """Conv4 (norm="batch") uses the fused layer; its embeddings and second-order MAML-style
  meta-gradient equal those of the four layers applied one after another (float64)."""
  model = conv4.make(image_size=12, channels=1, width=6, num_blocks=2, norm="batch",
                     conv_impl="native")

  def reference_apply(params, images):
    x = images
    for index in range(2):
      block = params[f"block{index}"]
      x = layers.conv2d(x, block["conv"]["kernel"], impl="native")
      x = _unfused_batch_norm_relu_max_pool(x, block["norm"]["scale"], block["norm"]["offset"])
    return x.reshape(x.shape[0], -1)

  with jax.enable_x64(True):
    params = testing.to_float64(model.init(jax.random.key(0)))
    params["block1"]["norm"]["scale"] = params["block1"]["norm"]["scale"].at[:3].set(-0.8)
    images = jax.random.uniform(jax.random.key(1), (8, 12, 12, 1), jnp.float64)
    targets = jax.random.normal(jax.random.key(2), (8, model.embedding_dim), jnp.float64)

    def meta_loss(apply, params):
      inner_loss = lambda p, x, y: jnp.mean(jnp.square(apply(p, x) - y))
      adapted = jax.tree.map(lambda p, g: p - 0.1 * g, params,
                             jax.grad(inner_loss)(params, images[:4], targets[:4]))
      return inner_loss(adapted, images[4:], targets[4:])

    np.testing.assert_allclose(model.apply(params, images), reference_apply(params, images),
                               rtol=1e-12, atol=1e-12)
    _close(jax.value_and_grad(lambda p: meta_loss(model.apply, p))(params),
           jax.value_and_grad(lambda p: meta_loss(reference_apply, p))(params),
           rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# The peer-harness workload (Conv4, 5-way 1-shot, 5 inner steps at 0.4, BatchNorm): the
# meta-gradients of every conv implementation agree, and the loss at the harness's initial
# parameters is the one jax_ref_map reports (1.77822 on meta-batch 0).


def _peer_workload():
  if not (_PEERS / "workload.py").is_file():
    pytest.fail(f"{_PEERS}/workload.py not found: set JMETA_PEERS_DIR to the peer harness folder")
  sys.path.insert(0, str(_PEERS))
  sys.path.insert(0, str(_REPO / "benchmarks"))
  import jmeta_peer  # pylint: disable=g-import-not-at-top
  import workload  # pylint: disable=g-import-not-at-top
  return workload, jmeta_peer


@pytest.mark.optimized_xla
def test_peer_workload_meta_gradients_are_as_accurate_as_direct_convolutions():
  """float32 loss and meta-gradient of each conv path against a float64 reference, on 2 tasks
  of the harness's meta-batch 0, second-order MAML ("so"). The float32 meta-gradient is
  ill-conditioned: paths that differ only in how they round land at distances from float64 that
  differ by 10× or more, partly by luck. When this test checked "bmg2" against the "xla" path's
  error alone, the fused Winograd kernels failed it (2026-12-07: loss 3.9e-3 and gradient 2.6e-2
  off, "xla" 1.1e-5 and 5.8e-5), while every kernel call matched XLA's own Winograd form on the
  same operands to 1e-5. So each Winograd path must be as close to float64 as the
  direct-convolution paths ("xla"; "native" without Winograd) are, within 4× (F(4×4, 3×3)'s
  float32 error is ~10× a direct convolution's: tests/winograd_test.py) plus float32 noise; the
  errors are printed (`pytest -s`). A wrong derivative anywhere is off by orders of magnitude
  more."""
  workload, jmeta_peer = _peer_workload()
  from jmeta import types  # pylint: disable=g-import-not-at-top
  from jmeta.models import winograd_cpu  # pylint: disable=g-import-not-at-top
  variant = "so"
  num_tasks = 2
  batch = workload.make_batches(1)[0]
  keys = jax.random.split(jax.random.key(0), num_tasks)

  def loss_and_grad(impl, dtype):
    tasks = types.Task(support=jnp.asarray(workload.to_nhwc(batch["xs"][:num_tasks]), dtype),
                       support_labels=jnp.asarray(batch["ys"][:num_tasks], jnp.int32),
                       query=jnp.asarray(workload.to_nhwc(batch["xq"][:num_tasks]), dtype),
                       query_labels=jnp.asarray(batch["yq"][:num_tasks], jnp.int32))
    model = conv4.make(image_size=28, channels=1, width=64, num_blocks=4, conv_impl=impl)
    adapter, objective = jmeta_peer.build_objective(variant, model.apply)
    meta_params = adapter.init_meta(jmeta_peer.params_from_workload(workload.init_params()))
    meta_params = jax.tree.map(lambda v: jnp.asarray(v, dtype), meta_params)
    mapped = train.map_tasks(objective, task_chunk_size=1)
    # "xla" needs LLVM's optimisation to run in seconds (its grouped-convolution fallback took
    # 228 s at level 0), and "native" is compared with it at the same level: the optimisation
    # level alone moves float32's rounding by more than the bound's slack (at level 0 "xla"
    # itself is off by 1.8e-5 in the loss, against 4e-7 to 6e-6 optimised; 2026-12-01).
    # "matmul" compiles in half the time at level 0. The fixture restores the setting.
    jax.config.update("jax_disable_most_optimizations", impl == "matmul")
    loss, grads = jax.jit(jax.value_and_grad(
        lambda p: jnp.mean(mapped(p, keys, tasks)[0])))(meta_params)
    return float(loss), np.concatenate([np.ravel(np.asarray(g, np.float64))
                                        for g in jax.tree.leaves(grads)])

  with jax.enable_x64(True):
    ref_loss, ref_grad = loss_and_grad("native", jnp.float64)  # == "xla" in float64 (see above)
  paths = {
      "xla": ("xla", contextlib.nullcontext()),
      "native, direct": ("native", mock.patch.object(layers, "_winograd_applies",
                                                     lambda *args: False)),
      "native, fused Winograd": ("native", contextlib.nullcontext()),
      "native, XLA Winograd": ("native", mock.patch.object(winograd_cpu, "enabled",
                                                           lambda: False)),
      "matmul": ("matmul", contextlib.nullcontext()),
  }
  errors = {}
  for name, (impl, patch) in paths.items():
    with patch:
      loss, grad = loss_and_grad(impl, jnp.float32)
    errors[name] = (abs(loss - ref_loss) / abs(ref_loss),
                    np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad))
  print("float32 errors (loss, gradient) against float64:", errors)
  assert winograd_cpu.enabled(), "the fused kernels did not build: see the logged warning"
  for index, what in enumerate(("loss", "gradient")):
    bound = 4 * max(errors["xla"][index], errors["native, direct"][index]) + 5e-5
    for name in ("native, fused Winograd", "native, XLA Winograd"):
      assert errors[name][index] <= bound, (name, what, errors)
  # "matmul" was measurably less accurate on an AVX2 machine (2.2e-3 loss / 2.8e-3 gradient on
  # "bmg2"; 6e-6 / 1.4e-4 on an AVX-512 one), though inside the harness's 5e-2.
  assert errors["matmul"][0] < 1e-2 and errors["matmul"][1] < 5e-2, ("matmul", errors)


@pytest.mark.optimized_xla
def test_peer_runner_loss_at_step_zero_matches_the_reference():
  workload, jmeta_peer = _peer_workload()
  del workload
  runner = jmeta_peer.Runner("fo")
  assert abs(runner.step(0) - 1.77822) < 2e-4


# ------------------------------------------------------------------------------------------------
# train.meta_gradient: per-chunk meta-gradients inside the task loop, tasks split over devices
# with shard_map; with one task per chunk the native (unbatched-weight) convolutions apply.


def _native_maml(num_inner_steps, dtype=jnp.float32):
  model = testing.tiny_conv(conv_impl="native")
  adapter = inner.head(model.apply, step_size=0.3)
  objective = meta.maml(adapter, classifiers.linear_head(model.apply),
                        num_inner_steps=num_inner_steps, extra_metrics=False)
  params = {"encoder": model.init(jax.random.key(0)),
            "head": inner.init_head(jax.random.key(3), model.embedding_dim, 3)}
  meta_params = adapter.init_meta(params)
  if dtype == jnp.float64:
    meta_params = testing.to_float64(meta_params)
  return objective, meta_params


@pytest.mark.parametrize("task_chunk_size", [None, 1, 2])
def test_meta_gradient_chunks_equal_the_gradient_of_the_mean(task_chunk_size):
  with jax.enable_x64(True):
    tasks = testing.fake_tasks(jax.random.key(1), num_tasks=4, dtype=jnp.float64)
    keys = jax.random.split(jax.random.key(2), 4)
    objective, meta_params = _native_maml(3, jnp.float64)
    mapped = train.map_tasks(objective)
    loss, grads = jax.jit(jax.value_and_grad(  # jit: op-by-op float64 MAML took a minute
        lambda p: jnp.mean(mapped(p, keys, tasks)[0])))(meta_params)
    gradient_fn = train.meta_gradient(objective, num_tasks=4, task_chunk_size=task_chunk_size)
    (chunked_loss, metrics), chunked_grads = jax.jit(gradient_fn)(meta_params, keys, tasks)
    _close((chunked_loss, chunked_grads), (loss, grads))
    np.testing.assert_allclose(metrics["meta_loss"], mapped(meta_params, keys, tasks)[1]["meta_loss"],
                               rtol=1e-9)


def test_meta_gradient_rejects_a_chunk_size_that_does_not_divide_the_tasks():
  objective, _ = _native_maml(1)
  with pytest.raises(ValueError, match="task_chunk_size=3 must be >= 1 and divide the 4 tasks"):
    train.meta_gradient(objective, num_tasks=4, task_chunk_size=3)


def _two_device_report():
  """Run as a script with 2 CPU devices: make_update's steps on 1 and on 2 devices."""
  jax.config.update("jax_num_cpu_devices", 2)
  import json  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jmeta import parallel  # pylint: disable=g-import-not-at-top
  tasks = testing.fake_tasks(jax.random.key(1), num_tasks=4)
  objective, meta_params = _native_maml(2)
  # SGD, not Adam: Adam turns float32 noise in near-zero gradients (e.g. conv biases before
  # batch norm, with conv_bias=True) into full-size steps, which would hide whether the
  # gradients agree.
  optimizer = optax.sgd(0.1)
  results = []
  for devices, task_chunk_size in ((1, None), (1, 1), (2, 1), (2, None)):
    mesh = parallel.make_mesh(devices) if devices > 1 else None
    state = train.init_state(meta_params, optimizer)
    data = tasks
    if mesh is not None:
      state, data = parallel.replicate(state, mesh), parallel.place(tasks, parallel.task_sharding(mesh))
    update = train.make_update(objective, optimizer, sample_tasks=lambda key, data: data,
                               num_tasks=4, task_chunk_size=task_chunk_size, mesh=mesh,
                               donate=False)
    losses = []
    for _ in range(3):
      state, metrics = update(state, jax.random.key(5), data)
      losses.append(float(metrics["meta_loss"]))
    results.append({"losses": losses, "params": [np.asarray(v).tolist()
                                                  for v in jax.tree.leaves(state.meta_params)]})
  print(json.dumps({"devices": len(jax.devices()), "results": results}))


def test_make_update_on_two_devices_with_native_convs_equals_one_device():
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])))
  result = subprocess.run([sys.executable, __file__, "--two-devices"], capture_output=True,
                          text=True, env=env, timeout=900, check=False, cwd=str(_REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
  assert report["devices"] == 2
  reference, *others = report["results"]
  for other in others:
    np.testing.assert_allclose(other["losses"], reference["losses"], rtol=1e-5)
    for a, b in zip(other["params"], reference["params"]):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


if __name__ == "__main__" and "--two-devices" in sys.argv:
  sys.path.insert(0, str(_REPO))
  _two_device_report()
