"""jmeta/models/winograd.py: F(2×2, 3×3) and F(4×4, 3×3) equal the direct 3×3 'SAME' convolution
and its kernel gradient (float64, so "equal" means equal up to rounding), for odd and even,
square and oblong, tiny and chunked inputs; their float32 error stays within a small multiple of
the direct form's."""
import functools

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


@pytest.mark.parametrize("output_tile", winograd.OUTPUT_TILES)
@pytest.mark.parametrize("shape", _SHAPES)
def test_conv3x3_and_its_weight_gradient_equal_the_direct_forms(shape, output_tile):
  with jax.enable_x64(True):
    x, kernel, cotangent = _operands(shape, jnp.float64)
    direct_weight_grad = jax.vjp(lambda k: _direct_conv(x, k), kernel)[1](cotangent)[0]
    conv = functools.partial(winograd.conv3x3, output_tile=output_tile)
    weight_grad = functools.partial(winograd.conv3x3_weight_grad, output_tile=output_tile)
    for compute in (lambda f, *args: f(*args), lambda f, *args: jax.jit(f)(*args)):
      np.testing.assert_allclose(compute(conv, x, kernel), _direct_conv(x, kernel),
                                 rtol=1e-10, atol=1e-11)
      np.testing.assert_allclose(compute(weight_grad, x, cotangent),
                                 direct_weight_grad, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("output_tile", winograd.OUTPUT_TILES)
def test_per_group_kernels_equal_one_convolution_per_group(output_tile):
  """x [G, N, H, W, C] with kernels [G, 3, 3, C, O] (what vmap over tasks with per-task kernels
  binds): each group's images with its own kernel, as G separate convolutions and gradients."""
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(3), 3)
    groups, images = 3, winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK + 2  # 2 chunks, the last short
    x = jax.random.normal(keys[0], (groups, images, 9, 7, 5), jnp.float64)
    kernel = jax.random.normal(keys[1], (groups, 3, 3, 5, 4), jnp.float64)
    cotangent = jax.random.normal(keys[2], (groups, images, 9, 7, 4), jnp.float64)
    conv = jax.jit(functools.partial(winograd.conv3x3, output_tile=output_tile))
    weight_grad = jax.jit(functools.partial(winograd.conv3x3_weight_grad,
                                            output_tile=output_tile))
    np.testing.assert_allclose(
        conv(x, kernel), np.stack([_direct_conv(x[i], kernel[i]) for i in range(groups)]),
        rtol=1e-10, atol=1e-11)
    direct_weight_grads = [jax.vjp(lambda k, i=i: _direct_conv(x[i], k), kernel[i])[1](
        cotangent[i])[0] for i in range(groups)]
    np.testing.assert_allclose(weight_grad(x, cotangent), np.stack(direct_weight_grads),
                               rtol=1e-10, atol=1e-11)


# F(4×4, 3×3)'s transforms multiply by up to 8 and by 1/24; at Conv4's shapes its float32 error
# is 5.7-8.1× the direct form's on an AVX2 machine (F(2×2, 3×3)'s is below the direct form's;
# benchmarks/results/winograd-conv-f4-2026-12-07.jsonl). The direct form's own error depends on
# the CPU's convolution kernels: on an AVX-512 machine (2026-12-07) its weight gradient was off by
# 4.9e-7 where F(4×4, 3×3)'s was 5.5e-6 (11×, ~46 float32 ulps), so each bound is a multiple of
# the direct form's error or a fixed number of float32 epsilons, whichever is larger.
_F32_EPS = float(np.finfo(np.float32).eps)


@pytest.mark.parametrize("output_tile, error_factor, eps_floor", [(2, 4, 8), (4, 10, 100)])
def test_float32_error_is_within_a_small_multiple_of_the_direct_forms(output_tile, error_factor,
                                                                     eps_floor):
  """Against a float64 reference, Winograd's float32 error at Conv4's second block (75 query
  images, 14×14, 64 channels) stays within `error_factor` × the direct convolution's own, or
  `eps_floor` float32 epsilons (relative to the largest output)."""
  x, kernel, cotangent = _operands((75, 14, 14, 64, 64), jnp.float32)
  kernel = kernel / 24.0  # He-like scale: unit-variance outputs
  with jax.enable_x64(True):
    x64, kernel64, cotangent64 = (np.asarray(a, np.float64) for a in (x, kernel, cotangent))
    exact = np.asarray(_direct_conv(x64, kernel64))
    exact_grad = np.asarray(jax.vjp(lambda k: _direct_conv(x64, k), kernel64)[1](cotangent64)[0])

  def error(value, reference):
    return np.max(np.abs(np.asarray(value, np.float64) - reference)) / np.max(np.abs(reference))

  floor = eps_floor * _F32_EPS
  direct_grad = jax.vjp(lambda k: _direct_conv(x, k), kernel)[1](cotangent)[0]
  assert error(winograd.conv3x3(x, kernel, output_tile=output_tile), exact) < max(
      error_factor * error(_direct_conv(x, kernel), exact), floor)
  assert error(winograd.conv3x3_weight_grad(x, cotangent, output_tile=output_tile),
               exact_grad) < max(error_factor * error(direct_grad, exact_grad), floor)


def test_conv3x3_rejects_other_kernel_sizes():
  with pytest.raises(ValueError, match="3×3 kernel"):
    winograd.conv3x3(jnp.zeros((1, 4, 4, 2)), jnp.zeros((5, 5, 2, 3)))


def test_conv3x3_rejects_other_output_tiles():
  with pytest.raises(ValueError, match=r"output_tile must be one of \(2, 4\) or None, got 3"):
    winograd.conv3x3(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 3)), output_tile=3)


@pytest.mark.parametrize("size, tile", [((14, 14), 4), ((7, 7), 4), ((6, 6), 2), ((5, 5), 2),
                                        ((5, 6), 2), ((6, 7), 4), ((1, 1), 2), ((28, 28), 4)])
def test_best_output_tile_has_the_fewest_multiplies_and_the_smaller_tile_on_ties(size, tile):
  assert winograd.best_output_tile(*size) == tile
  others = [t for t in winograd.OUTPUT_TILES if t != tile]
  assert all(winograd.multiplies(*size, tile) <= winograd.multiplies(*size, t) for t in others)


def test_multiplies_counts_whole_tiles():
  assert winograd.multiplies(14, 14, 4) == 576 and winograd.multiplies(14, 14, 2) == 784


def test_default_output_tile_is_the_best_one():
  x, kernel, cotangent = _operands((2, 7, 7, 3, 2), jnp.float32)
  for size in (7, 6):
    x_size = x[:, :size, :size]
    g = cotangent[:, :size, :size]
    tile = winograd.best_output_tile(size, size)
    np.testing.assert_array_equal(winograd.conv3x3(x_size, kernel),
                                  winograd.conv3x3(x_size, kernel, output_tile=tile))
    np.testing.assert_array_equal(winograd.conv3x3_weight_grad(x_size, g),
                                  winograd.conv3x3_weight_grad(x_size, g, output_tile=tile))
