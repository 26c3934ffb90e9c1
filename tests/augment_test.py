"""Contract and semantics tests for jmeta.augment (dm-pix style: tiny odd shapes, vmap/jit)."""
import colorsys
import doctest
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta import augment

# Every public factory with settings under which its output varies with the key (so the
# "different keys" contract is meaningful). Coin-flip ops keep a probability strictly inside
# (0, 1) when the op itself is deterministic, else probability 1.
FACTORIES = {
    'identity': augment.identity,
    'random_resized_crop': augment.random_resized_crop,
    'random_flip': augment.random_flip,
    'random_rotate90': augment.random_rotate90,
    'random_affine': augment.random_affine,
    'random_elastic': augment.random_elastic,
    'random_erasing': functools.partial(augment.random_erasing, probability=1.0),
    'color_jitter': functools.partial(augment.color_jitter, probability=1.0),
    'random_grayscale': functools.partial(augment.random_grayscale, probability=0.5),
    'gaussian_blur': functools.partial(augment.gaussian_blur, probability=1.0),
    'chain': lambda: augment.chain(augment.random_flip(), augment.random_erasing()),
}
DETERMINISTIC = {'identity'}
SHAPES = [(13, 11, 1), (13, 11, 3), (28, 28, 1)]


@functools.cache
def _jitted(name):
  """One jitted instance per factory, so tests on the same shape share a compilation."""
  return jax.jit(FACTORIES[name]())


def _image(seed, shape):
  return jax.random.uniform(jax.random.key(seed), shape)


def _keys(num):
  return jax.random.split(jax.random.key(42), num)


def test_factory_list_covers_public_api():
  public = {name for name, value in vars(augment).items()
            if inspect.isfunction(value) and not name.startswith('_')
            and value.__module__ == augment.__name__}
  assert public - {'views'} == set(FACTORIES)


@pytest.mark.parametrize('name', sorted(FACTORIES))
def test_api_conventions(name):
  factory = getattr(augment, name)
  for param in inspect.signature(factory).parameters.values():
    assert param.name != 'rng'
    assert param.kind in (param.KEYWORD_ONLY, param.VAR_POSITIONAL), (name, param)
  fn = FACTORIES[name]()
  assert list(inspect.signature(fn).parameters)[0] == 'key'
  assert list(inspect.signature(augment.views).parameters)[0] == 'key'


@pytest.mark.parametrize('name', sorted(FACTORIES))
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_shape_dtype_range(name, shape):
  fn = _jitted(name)
  image = _image(0, shape)
  for key in _keys(3):
    out = fn(key, image)
    assert out.shape == image.shape and out.dtype == image.dtype
    out = np.asarray(out)
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize('name', sorted(FACTORIES))
def test_same_key_same_output_different_keys_differ(name):
  fn = _jitted(name)
  image = _image(1, (13, 11, 3))
  keys = _keys(8)
  first = fn(keys[0], image)
  np.testing.assert_array_equal(first, fn(keys[0], image))
  differs = [not np.array_equal(first, fn(key, image)) for key in keys[1:]]
  if name in DETERMINISTIC:
    assert not any(differs)
  else:
    assert any(differs)


@pytest.mark.parametrize('name', sorted(FACTORIES))
def test_jit_equals_eager(name):
  fn = FACTORIES[name]()
  image = _image(2, (13, 11, 3))
  key = _keys(1)[0]
  np.testing.assert_allclose(_jitted(name)(key, image), fn(key, image), atol=1e-5)


@pytest.mark.parametrize('name', sorted(FACTORIES))
def test_vmap_equals_loop(name):
  fn = _jitted(name)
  keys = _keys(4)
  images = _image(3, (4, 13, 11, 3))
  batched = jax.jit(jax.vmap(fn))(keys, images)
  looped = jnp.stack([fn(keys[i], images[i]) for i in range(4)])
  np.testing.assert_allclose(batched, looped, atol=1e-5)


def test_typed_and_legacy_keys():
  fn = augment.random_affine()
  image = _image(4, (13, 11, 1))
  assert fn(jax.random.PRNGKey(0), image).shape == image.shape
  assert fn(jax.random.key(0), image).shape == image.shape


# ---------------------------------------------------------------------------------------------
# Semantics.


def test_flip_twice_is_identity():
  flip = jax.jit(augment.random_flip(probability=1.0))
  image = _image(5, (13, 11, 3))
  once = flip(jax.random.key(0), image)
  np.testing.assert_array_equal(once, image[:, ::-1])
  np.testing.assert_array_equal(flip(jax.random.key(1), once), image)
  never = jax.jit(augment.random_flip(probability=0.0))
  np.testing.assert_array_equal(never(jax.random.key(0), image), image)


@pytest.mark.parametrize('shape,turns', [((12, 12, 3), {0, 1, 2, 3}), ((13, 11, 1), {0, 2})])
def test_rotate90_matches_np_rot90(shape, turns):
  fn = jax.jit(augment.random_rotate90())
  image = np.asarray(_image(6, shape))
  seen = set()
  for key in _keys(16):
    out = np.asarray(fn(key, image))
    matches = [k for k in range(4)
               if np.rot90(image, k).shape == out.shape and np.array_equal(np.rot90(image, k), out)]
    assert len(matches) == 1
    seen.add(matches[0])
  assert seen == turns  # every allowed k occurs, and no shape-changing k for H != W.


def test_resized_crop_full_box_is_identity():
  crop = jax.jit(augment.random_resized_crop(scale=(1.0, 1.0), ratio=(1.0, 1.0)))
  image = _image(7, (28, 28, 1))
  for key in _keys(3):
    np.testing.assert_allclose(crop(key, image), image, atol=1e-5)


def test_resized_crop_non_square_falls_back_to_centre_crop():
  # ratio=(1, 1) cannot fit a full-area box in 13×11: the centre 11×11 square is resized.
  crop = jax.jit(augment.random_resized_crop(scale=(1.0, 1.0), ratio=(1.0, 1.0)))
  image = jnp.broadcast_to(jnp.linspace(0.0, 1.0, 11)[None, :, None], (13, 11, 1))
  np.testing.assert_allclose(crop(jax.random.key(0), image), image, atol=1e-5)


def test_resized_crop_zooms_in():
  crop = jax.jit(augment.random_resized_crop(scale=(0.25, 0.25), ratio=(1.0, 1.0)))
  image = jnp.broadcast_to(jnp.linspace(0.0, 1.0, 28)[None, :, None], (28, 28, 1))
  out = np.asarray(crop(jax.random.key(0), image))
  # A half-width box spans half the ramp's range.
  np.testing.assert_allclose(out[0, -1, 0] - out[0, 0, 0], 0.5, atol=0.05)


@pytest.mark.parametrize('shape', [(13, 11, 1), (12, 10, 3)])
def test_erasing_zeroes_one_rectangle(shape):
  erase = jax.jit(augment.random_erasing(probability=1.0))
  image = 0.1 + 0.9 * _image(8, shape)  # strictly positive, so zeros mark the erased region.
  for key in _keys(5):
    out = np.asarray(erase(key, image))
    erased = np.all(out == 0.0, axis=-1)
    assert erased.any()
    rows, cols = np.nonzero(erased)
    box = np.zeros_like(erased)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    np.testing.assert_array_equal(erased, box)  # a filled rectangle
    assert box.sum() < erased.size
    np.testing.assert_array_equal(out[~erased], np.asarray(image)[~erased])


def test_erasing_value():
  erase = jax.jit(augment.random_erasing(probability=1.0, value=0.5))
  out = np.asarray(erase(jax.random.key(0), jnp.ones((12, 10, 1))))
  assert set(np.unique(out)) == {0.5, 1.0}


def test_grayscale_has_equal_channels():
  gray = jax.jit(augment.random_grayscale(probability=1.0))
  image = _image(9, (12, 10, 3))
  out = np.asarray(gray(jax.random.key(0), image))
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  expected = np.asarray(image) @ np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose(out[..., 0], expected, atol=1e-5)
  # A 1-channel image is already gray.
  image = _image(9, (13, 11, 1))
  np.testing.assert_array_equal(gray(jax.random.key(0), image), image)


def test_affine_zero_ranges_is_identity():
  affine = jax.jit(augment.random_affine(degrees=0.0, shear=0.0, translate=0.0,
                                         scale=(1.0, 1.0)))
  image = _image(10, (13, 11, 3))
  for key in _keys(3):
    np.testing.assert_allclose(affine(key, image), image, atol=1e-5)


def test_affine_fills_outside():
  # A 2× zoom-out leaves a border that reads `fill`.
  affine = jax.jit(augment.random_affine(degrees=0.0, shear=0.0, translate=0.0,
                                         scale=(0.5, 0.5), fill=0.25))
  out = np.asarray(affine(jax.random.key(0), jnp.ones((12, 12, 1))))
  assert out[0, 0, 0] == pytest.approx(0.25)
  assert out[6, 6, 0] == pytest.approx(1.0)


def test_elastic_zero_magnitude_or_probability_is_identity():
  image = _image(0, (13, 11, 3))
  for fn in (augment.random_elastic(magnitude=0.0), augment.random_elastic(probability=0.0)):
    np.testing.assert_array_equal(jax.jit(fn)(jax.random.key(1), image), image)


@pytest.mark.parametrize('magnitude,smoothness', [(1.0, 3.0), (2.0, 2.0)])
def test_elastic_displacement_has_the_requested_spread(magnitude, smoothness):
  # On a linear ramp bilinear sampling is exact, so the warped value minus the ramp is the
  # displacement itself: its standard deviation (over pixels away from the border, whose
  # reflect padding correlates the noise, and over keys) must be `magnitude` pixels, and the
  # field must be smooth (neighbouring pixels move together).
  size = 96
  ramp = jnp.broadcast_to(jnp.arange(size, dtype=jnp.float32)[None, :, None] / (size - 1),
                          (size, size, 1))
  fn = jax.jit(jax.vmap(augment.random_elastic(magnitude=magnitude, smoothness=smoothness),
                        in_axes=(0, None)))
  dx = (np.asarray(fn(_keys(64), ramp)) - np.asarray(ramp)) * (size - 1)
  interior = dx[:, 24:-24, 24:-24, 0]
  assert abs(interior.mean()) < 0.1 * magnitude
  np.testing.assert_allclose(interior.std(), magnitude, rtol=0.1)
  neighbour_correlation = np.corrcoef(interior[:, :, :-1].ravel(),
                                      interior[:, :, 1:].ravel())[0, 1]
  assert neighbour_correlation > 0.8


def test_color_jitter_semantics():
  image = _image(11, (12, 10, 3))
  key = jax.random.key(0)
  off = augment.color_jitter(brightness=0., contrast=0., saturation=0., hue=0., probability=1.)
  np.testing.assert_array_equal(off(key, image), image)
  never = augment.color_jitter(probability=0.0)
  np.testing.assert_array_equal(never(key, image), image)
  # Hue alone changes colours but keeps each pixel's HSV value (its max channel).
  hue_only = jax.jit(augment.color_jitter(brightness=0., contrast=0., saturation=0., hue=0.5,
                                          probability=1.))
  out = hue_only(key, image)
  assert not np.allclose(out, image)
  np.testing.assert_allclose(jnp.max(out, -1), jnp.max(image, -1), atol=1e-5)  # keeps value
  # Gray pixels have no hue or saturation to change.
  gray = jnp.full((12, 10, 3), 0.3)
  sat_hue = jax.jit(augment.color_jitter(brightness=0., contrast=0., probability=1.))
  np.testing.assert_allclose(sat_hue(key, gray), gray, atol=1e-6)


@pytest.mark.parametrize('shift', [0.0, 0.13, -0.4, 0.5])
def test_hue_shift_matches_colorsys(shift):
  pixels = np.random.default_rng(0).uniform(size=(40, 3)).astype(np.float32)
  pixels[:4] = [[0.3, 0.3, 0.3], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.9, 0.9]]
  expected = []
  for pixel in pixels:
    hue, saturation, value = colorsys.rgb_to_hsv(*pixel)
    expected.append(colorsys.hsv_to_rgb((hue + shift) % 1.0, saturation, value))
  np.testing.assert_allclose(jax.jit(augment._shift_hue)(pixels, shift), expected, atol=1e-5)


def test_color_jitter_jit_equals_eager_without_xla_optimizations():
  # Regression: unoptimised XLA recomputes blended pixels in separate fusions, off by an ulp,
  # so a hue sector chosen by `red == max(rgb)` matched no channel and hue jumped by ~0.3.
  previous = jax.config.values.get('jax_disable_most_optimizations', False)
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    fn = augment.color_jitter(probability=1.0)
    image = _image(2, (13, 11, 3))
    for key in _keys(2):
      np.testing.assert_allclose(jax.jit(fn)(key, image), fn(key, image), atol=1e-5)
  finally:
    jax.config.update('jax_disable_most_optimizations', previous)


def test_color_jitter_grayscale_brightness_only():
  image = _image(12, (13, 11, 1))
  sat_hue = augment.color_jitter(brightness=0., contrast=0., saturation=1., hue=0.5,
                                 probability=1.)
  np.testing.assert_array_equal(sat_hue(jax.random.key(0), image), image)
  bright = jax.jit(augment.color_jitter(contrast=0., saturation=0., hue=0., probability=1.))
  out = np.asarray(bright(jax.random.key(0), image))
  ratio = out / np.asarray(image)
  unclipped = out < 1.0
  np.testing.assert_allclose(ratio[unclipped], ratio[unclipped][0], rtol=1e-4)


@pytest.mark.parametrize('factory', [augment.color_jitter, augment.random_grayscale])
@pytest.mark.parametrize('channels', [2, 4])
def test_color_ops_reject_other_channel_counts(factory, channels):
  with pytest.raises(ValueError, match=f'{channels} channels'):
    factory(probability=1.0)(jax.random.key(0), jnp.zeros((12, 10, channels)))


def test_blur_smooths_and_keeps_constants():
  # sigma 1 gives 7 taps: an impulse 5 pixels from every edge never meets its reflection.
  blur = jax.jit(augment.gaussian_blur(sigma=(1.0, 1.0), probability=1.0))
  constant = jnp.full((13, 11, 2), 0.7)
  np.testing.assert_allclose(blur(jax.random.key(0), constant), constant, atol=1e-6)
  impulse = jnp.zeros((13, 11, 1)).at[6, 5, 0].set(1.0)
  out = np.asarray(blur(jax.random.key(0), impulse))
  assert out.sum() == pytest.approx(1.0, abs=1e-5)  # interior impulse: mass is preserved
  assert out[6, 5, 0] < 0.2
  np.testing.assert_allclose(out[:, :, 0], out[::-1, ::-1, 0], atol=1e-6)  # symmetric kernel
  tiny = _image(13, (3, 2, 1))  # smaller than the kernel: reflect padding still works
  assert np.all(np.isfinite(blur(jax.random.key(0), tiny)))


def test_bad_image_rank_raises():
  with pytest.raises(ValueError, match='shape'):
    augment.random_flip()(jax.random.key(0), jnp.zeros((2, 12, 10, 3)))


@pytest.mark.parametrize('factory,kwargs,argument', [
    (augment.random_resized_crop, {'scale': (0.8, 0.5)}, 'scale'),
    (augment.random_resized_crop, {'scale': (0.0, 1.0)}, 'scale'),
    (augment.random_resized_crop, {'scale': (0.5, 1.5)}, 'scale'),
    (augment.random_resized_crop, {'ratio': (2.0, 1.0)}, 'ratio'),
    (augment.random_resized_crop, {'ratio': 1.0}, 'ratio'),
    (augment.random_flip, {'probability': 1.5}, 'probability'),
    (augment.random_flip, {'probability': -0.1}, 'probability'),
    (augment.random_affine, {'degrees': -1.0}, 'degrees'),
    (augment.random_affine, {'shear': 90.0}, 'shear'),
    (augment.random_affine, {'translate': 1.5}, 'translate'),
    (augment.random_affine, {'scale': (1.2, 0.9)}, 'scale'),
    (augment.random_affine, {'fill': 2.0}, 'fill'),
    (augment.random_elastic, {'magnitude': -1.0}, 'magnitude'),
    (augment.random_elastic, {'smoothness': 0.0}, 'smoothness'),
    (augment.random_elastic, {'probability': 1.5}, 'probability'),
    (augment.random_elastic, {'fill': -0.5}, 'fill'),
    (augment.random_erasing, {'probability': 2.0}, 'probability'),
    (augment.random_erasing, {'scale': (0.3, 0.1)}, 'scale'),
    (augment.random_erasing, {'ratio': (-1.0, 1.0)}, 'ratio'),
    (augment.random_erasing, {'value': -0.5}, 'value'),
    (augment.color_jitter, {'brightness': -0.1}, 'brightness'),
    (augment.color_jitter, {'contrast': -0.1}, 'contrast'),
    (augment.color_jitter, {'saturation': -0.1}, 'saturation'),
    (augment.color_jitter, {'hue': 0.6}, 'hue'),
    (augment.color_jitter, {'probability': 1.1}, 'probability'),
    (augment.random_grayscale, {'probability': float('nan')}, 'probability'),
    (augment.gaussian_blur, {'sigma': (2.0, 1.0)}, 'sigma'),
    (augment.gaussian_blur, {'sigma': (0.0, 1.0)}, 'sigma'),
    (augment.gaussian_blur, {'kernel_size': 4}, 'kernel_size'),
    (augment.gaussian_blur, {'kernel_size': 0}, 'kernel_size'),
    (augment.gaussian_blur, {'probability': 3.0}, 'probability'),
])
def test_bad_arguments_raise(factory, kwargs, argument):
  with pytest.raises(ValueError, match=argument):
    factory(**kwargs)


def test_bad_chain_and_views_arguments_raise():
  with pytest.raises(ValueError, match='fns'):
    augment.chain(augment.identity(), 3)
  with pytest.raises(ValueError, match='num_views'):
    augment.views(jax.random.key(0), jnp.zeros((12, 10, 3)), augment.identity(), 0)


# ---------------------------------------------------------------------------------------------
# Composition.


def test_chain_composes():
  image = _image(14, (12, 10, 3))
  key = jax.random.key(0)
  np.testing.assert_array_equal(augment.chain(augment.identity())(key, image),
                                augment.identity()(key, image))
  np.testing.assert_array_equal(augment.chain()(key, image), image)
  # Each fn gets its own sub-key, in order.
  flip, gray = augment.random_flip(), augment.random_grayscale(probability=0.5)
  key_flip, key_gray = jax.random.split(key)
  expected = gray(key_gray, flip(key_flip, image))
  np.testing.assert_array_equal(augment.chain(flip, gray)(key, image), expected)


def test_views_are_distinct_and_match_keys():
  image = _image(15, (12, 10, 3))
  augment_fn = augment.chain(augment.random_resized_crop(), augment.random_flip())
  key = jax.random.key(0)
  out = jax.jit(augment.views, static_argnums=(2, 3))(key, image, augment_fn, 4)
  assert out.shape == (4, 12, 10, 3)
  flat = np.asarray(out).reshape(4, -1)
  for i in range(4):
    for j in range(i + 1, 4):
      assert not np.array_equal(flat[i], flat[j])
  for i, view_key in enumerate(jax.random.split(key, 4)):
    np.testing.assert_allclose(out[i], jax.jit(augment_fn)(view_key, image), atol=1e-5)


def test_docstring_examples():
  results = doctest.testmod(augment, extraglobs={'augment': augment})
  assert results.attempted > 0 and results.failed == 0
