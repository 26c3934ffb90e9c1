"""Conv4 and its layers: shapes, validation, norm modes under jit(grad(vmap(grad))), conv
implementations equal in values and (second-order) gradients, odd-sized pooling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta import testing
from jmeta.models import conv4
from jmeta.models import layers


# ------------------------------------------------------------------------------------------------
# Conv4: shapes and validation (shape-only checks use eval_shape: nothing compiles).


@pytest.mark.parametrize("image_size,num_blocks,width,embedding_dim", [
    (28, 4, 64, 64),           # Omniglot: 28→14→7→3→1
    (84, 4, 32, 5 * 5 * 32),   # mini-ImageNet: 84→42→21→10→5
    (13, 2, 4, 3 * 3 * 4),     # odd sizes floor: 13→6→3
    (8, 2, 4, 16),
])
def test_conv4_output_shape(image_size, num_blocks, width, embedding_dim):
  model = conv4.make(image_size=image_size, channels=3, width=width, num_blocks=num_blocks)
  assert model.embedding_dim == embedding_dim
  params = jax.eval_shape(model.init, jax.random.key(0))
  assert len(params) == num_blocks
  assert params["block0"]["conv"]["kernel"].shape == (3, 3, 3, width)
  assert params[f"block{num_blocks - 1}"]["conv"]["kernel"].shape == (3, 3, width, width)
  out = jax.eval_shape(model.apply, params,
                       jax.ShapeDtypeStruct((5, image_size, image_size, 3), jnp.float32))
  assert out.shape == (5, embedding_dim) and out.dtype == jnp.float32


def test_conv4_validates_arguments():
  with pytest.raises(ValueError, match="norm='layer'"):
    conv4.make(norm="layer")
  with pytest.raises(ValueError, match="conv_impl='fft'"):
    conv4.make(conv_impl="fft")
  with pytest.raises(ValueError, match="num_groups=3 must divide width=8"):
    conv4.make(width=8, norm="group", num_groups=3)
  with pytest.raises(ValueError, match="image_size=8 is too small for num_blocks=4"):
    conv4.make(image_size=8, num_blocks=4)
  model = testing.tiny_conv()
  params = jax.eval_shape(model.init, jax.random.key(0))
  with pytest.raises(ValueError, match=r"images \[B, 8, 8, 1\]"):
    model.apply(params, jnp.zeros((2, 10, 10, 1)))
  with pytest.raises(ValueError, match="norm"):
    layers.normalize(jnp.zeros((1, 2, 2, 4)), None, None, mode="instance")


def test_conv4_conv_bias_only_where_batch_norm_does_not_cancel_it():
  def has_bias(**kwargs):
    params = jax.eval_shape(testing.tiny_conv(**kwargs).init, jax.random.key(0))
    return ["bias" in params[name]["conv"] for name in sorted(params)]

  assert has_bias(norm="batch") == [False, False]
  assert has_bias(norm="group") == [True, True]
  assert has_bias(norm="none") == [True, True]
  assert has_bias(norm="batch", conv_bias=True) == [True, True]
  assert has_bias(norm="group", conv_bias=False) == [False, False]
  # Leaving the bias out does not change the kernels a key draws.
  with_bias = testing.tiny_conv(conv_bias=True).init(jax.random.key(0))
  without = testing.tiny_conv().init(jax.random.key(0))
  for name in with_bias:
    np.testing.assert_array_equal(without[name]["conv"]["kernel"],
                                  with_bias[name]["conv"]["kernel"])


def test_conv_bias_before_batch_norm_changes_nothing():
  """Float64: Conv4 with large random conv biases (norm="batch") equals Conv4 without them in
  its embeddings and in the second-order MAML meta-gradient of every shared parameter, and the
  biases' own meta-gradient is zero — so leaving them out (the default) is exact."""
  with jax.enable_x64(True):
    tasks = testing.fake_tasks(jax.random.key(1), num_tasks=2, dtype=jnp.float64)
    model = testing.tiny_conv(conv_bias=True)
    with_bias = jax.tree.map(lambda p: p.astype(jnp.float64), model.init(jax.random.key(0)))
    for index, name in enumerate(sorted(with_bias)):
      with_bias[name]["conv"]["bias"] = 3.0 * jax.random.normal(
          jax.random.key(10 + index), with_bias[name]["conv"]["bias"].shape, jnp.float64)
    without = {name: {"conv": {"kernel": block["conv"]["kernel"]}, "norm": block["norm"]}
               for name, block in with_bias.items()}
    assert testing.tiny_conv().init(jax.random.key(0)).keys() == without.keys()
    embed = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))
    np.testing.assert_allclose(embed(with_bias, tasks.query), embed(without, tasks.query),
                               rtol=1e-10, atol=1e-12)
    meta_grad = jax.jit(jax.grad(_meta_loss(model.apply)))
    grads_with, grads_without = meta_grad(with_bias, tasks), meta_grad(without, tasks)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_without))
    assert scale > 1e-3
    for name in with_bias:
      np.testing.assert_allclose(grads_with[name]["conv"]["bias"], 0.0, atol=1e-10 * scale)
      grads_with[name]["conv"].pop("bias")
    testing.assert_trees_allclose(grads_with, grads_without, rtol=1e-8, atol=1e-10 * scale)


def test_uniform_init_matches_pytorch_default():
  x = layers.uniform_init(jax.random.key(0), (3, 3, 4, 8), fan_in=36)
  assert x.dtype == jnp.float32
  bound = 1 / 6
  assert np.all(np.abs(x) <= bound) and np.max(np.abs(x)) > 0.9 * bound


# ------------------------------------------------------------------------------------------------
# Layers against numpy references.


def _numpy_conv(x, kernel, bias):
  """'SAME' stride-1 convolution by explicit loops over the kernel taps."""
  size = kernel.shape[0]
  pad = size // 2
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for dy in range(size):
    for dx in range(size):
      out += padded[:, dy:dy + x.shape[1], dx:dx + x.shape[2], :] @ kernel[dy, dx]
  return out if bias is None else out + bias


@pytest.mark.parametrize("impl", layers.CONV_IMPLS)
@pytest.mark.parametrize("shape,size,with_bias", [((2, 7, 5, 3), 3, True), ((1, 6, 9, 2), 5, False)])
def test_conv2d_matches_numpy(impl, shape, size, with_bias):
  key_x, key_kernel, key_bias = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(key_x, shape)
  kernel = jax.random.normal(key_kernel, (size, size, shape[-1], 4))
  bias = jax.random.normal(key_bias, (4,)) if with_bias else None
  out = layers.conv2d(x, kernel, bias, impl=impl)
  np.testing.assert_allclose(out, _numpy_conv(np.asarray(x, np.float64),
                                              np.asarray(kernel, np.float64),
                                              None if bias is None else np.asarray(bias)),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 7, 5, 3), (1, 3, 3, 1), (1, 1, 4, 2), (2, 4, 6, 1)])
def test_max_pool_floors_odd_sizes(shape):
  x = np.asarray(jax.random.normal(jax.random.key(1), shape))
  out = layers.max_pool2x2(jnp.asarray(x))
  height, width = shape[1] // 2, shape[2] // 2
  expected = np.zeros((shape[0], height, width, shape[3]), np.float32)
  for i in range(height):
    for j in range(width):
      expected[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
  assert out.shape == expected.shape
  np.testing.assert_array_equal(out, expected)
  reference = jax.lax.reduce_window(jnp.asarray(x), -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                    (1, 2, 2, 1), "VALID")
  np.testing.assert_array_equal(out, reference)


def test_normalize_modes():
  x = jax.random.normal(jax.random.key(2), (3, 4, 5, 6)) * 3.0 + 1.0
  scale, offset = jnp.arange(1.0, 7.0), jnp.arange(6.0) / 10
  np.testing.assert_array_equal(layers.normalize(x, scale, offset, mode="none"), x)

  # batch: statistics over (B, H, W) of this very batch, per channel.
  out = layers.normalize(x, jnp.ones(6), jnp.zeros(6), mode="batch")
  np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
  x64 = np.asarray(x, np.float64)
  mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
  np.testing.assert_allclose(layers.normalize(x, scale, offset, mode="batch"),
                             (x64 - mean) / np.sqrt(var + 1e-5) * scale + offset,
                             rtol=1e-4, atol=1e-5)

  # group: per example, over (H, W, channels of the group).
  grouped = x64.reshape(3, 4, 5, 2, 3)
  mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
  var = grouped.var(axis=(1, 2, 4), keepdims=True)
  expected = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + offset
  np.testing.assert_allclose(layers.normalize(x, scale, offset, mode="group", num_groups=2),
                             expected, rtol=1e-4, atol=1e-5)
  # Group statistics never mix examples: changing one example leaves the others unchanged.
  changed = x.at[0].multiply(5.0)
  np.testing.assert_allclose(layers.normalize(changed, scale, offset, mode="group", num_groups=2)[1:],
                             layers.normalize(x, scale, offset, mode="group", num_groups=2)[1:],
                             rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Norm modes under jit(grad(vmap(grad))): a MAML step over a batch of tasks.


def _meta_loss(apply_fn):
  """Mean over tasks of a query loss after one SGD step on a support loss (squared errors of the
  embeddings against the labels: cheap to compile, every layer gets second derivatives)."""

  def squared_error(params, images, labels):
    return jnp.mean(jnp.square(apply_fn(params, images) - labels[:, None]))

  def task_loss(params, task):
    grads = jax.grad(squared_error)(params, task.support, task.support_labels)
    adapted = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
    return squared_error(adapted, task.query, task.query_labels)

  return lambda params, tasks: jnp.mean(jax.vmap(task_loss, in_axes=(None, 0))(params, tasks))


def test_norm_modes_under_jit_grad_vmap_grad():
  """Finite, non-zero, and jit equals eager (no fusion) for every norm mode.

  One test for all modes: eager mode compiles every primitive once per shape, and the modes
  share most of them. This caught max_pool2x2 routing gradients by `x == max` (see layers.py).
  """
  tasks = testing.fake_tasks(jax.random.key(1), num_tasks=2)
  for norm in layers.NORM_MODES:
    model = testing.tiny_conv(norm=norm)
    params = model.init(jax.random.key(0))
    value_and_grad = jax.value_and_grad(_meta_loss(model.apply))
    loss, grads = jax.jit(value_and_grad)(params, tasks)
    assert np.isfinite(loss), norm
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), norm
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 1e-5, norm
    eager_loss, eager_grads = value_and_grad(params, tasks)
    np.testing.assert_allclose(loss, eager_loss, rtol=1e-5, err_msg=norm)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(eager_grads))
    try:
      testing.assert_trees_allclose(grads, eager_grads, rtol=1e-4, atol=1e-5 * scale)
    except AssertionError as error:
      raise AssertionError(f"norm={norm!r}: jit differs from eager") from error


# ------------------------------------------------------------------------------------------------
# The fast paths: every conv_impl equals "xla" in values and first- and second-order grads.


def test_conv_impls_agree_with_second_order_gradients():
  """conv2d alone, float64: values, gradients w.r.t. input and kernel, a Hessian-vector
  product, a MAML-style gradient through one gradient step, and all of it vmapped over per-task
  kernels (which XLA would lower to a grouped convolution)."""
  with jax.enable_x64(True):
    key_x, key_kernel, key_direction = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(key_x, (3, 2, 7, 6, 3), jnp.float64)      # [T, B, H, W, C]
    kernels = jax.random.normal(key_kernel, (3, 3, 3, 3, 4), jnp.float64)  # [T, k, k, C, O]
    direction = jax.random.normal(key_direction, kernels.shape[1:], jnp.float64)
    results = {}
    for impl in layers.CONV_IMPLS:

      def per_task(x, kernel, impl=impl):
        loss = lambda x, kernel: jnp.sum(jnp.tanh(layers.conv2d(x, kernel, impl=impl)))
        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(x, kernel)
        hvp = jax.jvp(lambda k: jax.grad(loss, argnums=1)(x, k), (kernel,), (direction,))[1]
        adapted = lambda k: k - 0.1 * jax.grad(loss, argnums=1)(x, k)
        meta_grad = jax.grad(lambda k: loss(x[::-1], adapted(k)))(kernel)
        return layers.conv2d(x, kernel, impl=impl), value, grads, hvp, meta_grad

      results[impl] = jax.jit(jax.vmap(per_task))(x, kernels)
    for impl in layers.CONV_IMPLS:  # against plain lax.conv_general_dilated and plain autodiff
      try:
        testing.assert_trees_allclose(results[impl], results["xla"], rtol=1e-9, atol=1e-12)
      except AssertionError as error:
        raise AssertionError(f"conv_impl={impl!r} differs from 'xla'") from error


def test_conv4_conv_impls_agree():
  tasks = testing.fake_tasks(jax.random.key(1), num_tasks=2)
  params = testing.tiny_conv().init(jax.random.key(0))
  results = {}
  for impl in layers.CONV_IMPLS:
    embed = jax.vmap(testing.tiny_conv(conv_impl=impl).apply, in_axes=(None, 0))
    loss = lambda p, embed=embed: jnp.sum(jnp.tanh(embed(p, tasks.support)))
    results[impl] = jax.jit(lambda p, loss=loss, embed=embed: (embed(p, tasks.support),
                                                               jax.grad(loss)(p)))(params)
  for impl in layers.CONV_IMPLS:
    try:
      testing.assert_trees_allclose(results[impl], results["xla"], rtol=1e-4, atol=1e-5)
    except AssertionError as error:
      raise AssertionError(f"conv_impl={impl!r} differs from 'xla'") from error
