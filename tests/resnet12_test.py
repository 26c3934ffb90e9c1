"""ResNet-12: shapes, every norm mode under jit(grad(vmap(grad))), matmul == xla convolution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta import losses
from jmeta import testing
from jmeta.models import resnet12


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_norm_modes_under_jit_grad_vmap_grad(norm):
  model = resnet12.make(image_size=16, channels=1, width=4, norm=norm, num_groups=2)
  params = model.init(jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (2, 4, 16, 16, 1))
  labels = jnp.array([0, 0, 1, 1])

  def inner_loss(p, x):
    return losses.supcon(model.apply(p, x), labels, temperature=0.5)

  def outer(p):
    grads = jax.vmap(jax.grad(inner_loss), in_axes=(None, 0))(p, images)
    adapted = jax.tree.map(lambda w, g: w - 0.1 * g.mean(0), p, grads)
    return jnp.mean(model.apply(adapted, images[0]) ** 2)

  jitted = jax.jit(jax.grad(outer))(params)
  assert model.apply(params, images[0]).shape == (4, model.embedding_dim) == (4, 40)
  # (jit against eager is checked on Conv4 in models_test.py; eager ResNet-12 is slow.)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(jitted))
  assert any(np.any(g != 0) for g in jax.tree.leaves(jitted))


def test_matmul_and_xla_convolutions_agree_in_values_and_gradients():
  # float64: in float32 the two summation orders through 12 batch-normalised layers differ by
  # up to ~4% on small gradient entries (a tolerance that flaked under load); in float64 any
  # real difference stands out against ~1e-12 rounding.
  with jax.enable_x64(True):
    images = jax.random.uniform(jax.random.key(1), (3, 16, 16, 1), dtype=jnp.float64)
    fast = resnet12.make(image_size=16, channels=1, width=4, conv_impl="matmul")
    reference = resnet12.make(image_size=16, channels=1, width=4, conv_impl="xla")
    params = testing.to_float64(fast.init(jax.random.key(0)))
    np.testing.assert_allclose(fast.apply(params, images), reference.apply(params, images),
                               rtol=1e-10, atol=1e-12)
    grad = lambda model: jax.grad(lambda p: jnp.sum(model.apply(p, images) ** 2))(params)
    fast_grads, reference_grads = jax.tree.leaves(grad(fast)), jax.tree.leaves(grad(reference))
    assert all(a.dtype == jnp.float64 for a in fast_grads)
    for a, b in zip(fast_grads, reference_grads):
      np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * float(np.abs(b).max()) + 1e-14)


def test_bad_arguments_name_the_field():
  with pytest.raises(ValueError, match="image_size"):
    resnet12.make(image_size=8)
  with pytest.raises(ValueError, match="norm"):
    resnet12.make(norm="layer")
  with pytest.raises(ValueError, match="images"):
    model = resnet12.make(image_size=16, channels=1, width=4)
    model.apply(model.init(jax.random.key(0)), jnp.zeros((2, 28, 28, 1)))
