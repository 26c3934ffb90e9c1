"""jmeta/models/winograd.py: F(2×2, 3×3) equals the direct 3×3 'SAME' convolution and its kernel
gradient (float64, so "equal" means equal up to rounding), for odd and even, square and oblong,
tiny and chunked inputs; in float32 it is as accurate as the direct form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.models import winograd

_SHAPES = [  # (images, height, width, in channels, out channels)
    (2, 14, 14, 8, 6),
    (3, 7, 7, 5, 4),        # odd: the last block of tiles is half outside the image
    (2, 6, 9, 3, 2),        # oblong, odd width
    (2, 1, 1, 4, 3),        # one pixel
    (4, 2, 3, 2, 5),
    (winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK * 2 + 1, 5, 4, 3, 2),  # 3 chunks, the last of 1 image
]


def _direct_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _operands(shape, dtype):
  images, height, width, channels, out_channels = shape
  keys = jax.random.split(jax.random.key(sum(shape)), 3)
  x = jax.random.normal(keys[0], (images, height, width, channels), dtype)
  kernel = jax.random.normal(keys[1], (3, 3, channels, out_channels), dtype)
  cotangent = jax.random.normal(keys[2], (images, height, width, out_channels), dtype)
  return x, kernel, cotangent


@pytest.mark.parametrize("shape", _SHAPES)
def test_conv3x3_and_its_weight_gradient_equal_the_direct_forms(shape):
  with jax.enable_x64(True):
    x, kernel, cotangent = _operands(shape, jnp.float64)
    direct_weight_grad = jax.vjp(lambda k: _direct_conv(x, k), kernel)[1](cotangent)[0]
    for compute in (lambda f, *args: f(*args), lambda f, *args: jax.jit(f)(*args)):
      np.testing.assert_allclose(compute(winograd.conv3x3, x, kernel), _direct_conv(x, kernel),
                                 rtol=1e-10, atol=1e-11)
      np.testing.assert_allclose(compute(winograd.conv3x3_weight_grad, x, cotangent),
                                 direct_weight_grad, rtol=1e-10, atol=1e-11)


def test_float32_error_is_the_direct_forms_at_conv4_shapes():
  """Against a float64 reference, Winograd's float32 error at Conv4's second block (75 query
  images, 14×14, 64 channels) stays within 4× the direct convolution's own."""
  x, kernel, cotangent = _operands((75, 14, 14, 64, 64), jnp.float32)
  kernel = kernel / 24.0  # He-like scale: unit-variance outputs
  with jax.enable_x64(True):
    x64, kernel64, cotangent64 = (np.asarray(a, np.float64) for a in (x, kernel, cotangent))
    exact = np.asarray(_direct_conv(x64, kernel64))
    exact_grad = np.asarray(jax.vjp(lambda k: _direct_conv(x64, k), kernel64)[1](cotangent64)[0])

  def error(value, reference):
    return np.max(np.abs(np.asarray(value, np.float64) - reference)) / np.max(np.abs(reference))

  direct_grad = jax.vjp(lambda k: _direct_conv(x, k), kernel)[1](cotangent)[0]
  assert error(winograd.conv3x3(x, kernel), exact) < max(
      4 * error(_direct_conv(x, kernel), exact), 1e-6)
  assert error(winograd.conv3x3_weight_grad(x, cotangent), exact_grad) < max(
      4 * error(direct_grad, exact_grad), 1e-6)


def test_conv3x3_rejects_other_kernel_sizes():
  with pytest.raises(ValueError, match="3×3 kernel"):
    winograd.conv3x3(jnp.zeros((1, 4, 4, 2)), jnp.zeros((5, 5, 2, 3)))
