"""Pure single-image augmentations for building views of unlabeled images.

Every public factory returns an `AugmentFn`, a pure function `fn(key, image) -> image` on one
`[H, W, C]` float image in [0, 1] (dm-pix style): the key comes first, the output has the input's
shape and dtype, values stay in [0, 1], and all shapes are static, so every op runs inside
`jax.jit` and batches with `jax.vmap` over keys and images. Stochastic choices are made with
`jnp.where`/`lax.cond`/`lax.switch` on sampled values, never with Python control flow.

Compose with `chain` and draw several views of one image with `views` (the examples in this
module assume these imports):

>>> import jax, jax.numpy as jnp
>>> from jmeta import augment
>>> augment_fn = augment.chain(augment.random_resized_crop(), augment.random_flip())
>>> make_views = jax.jit(lambda key, image: augment.views(key, image, augment_fn, 4))
>>> make_views(jax.random.key(0), jnp.ones((28, 28, 1))).shape
(4, 28, 28, 1)

Colour ops (`color_jitter`, `random_grayscale`) accept C = 3 (RGB) or C = 1, which (as in
torchvision) is already gray: grayscale is the identity and jitter applies only brightness and
contrast. Other channel counts raise a ValueError at trace time. All other ops accept any C.
"""
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.types import PRNGKey

AugmentFn = Callable[[PRNGKey, jax.Array], jax.Array]

# ITU-R 601-2 luma, the weights torchvision and PIL use for RGB -> L.
_LUMA = (0.299, 0.587, 0.114)
# Box-sampling attempts before falling back (torchvision uses 10); vectorised, so static.
_NUM_ATTEMPTS = 10


# ---------------------------------------------------------------------------------------------
# Argument validation (eager, at factory time) and shared helpers.

def _check_probability(name: str, value: float) -> None:
  _check_scalar(name, value, low=0.0, high=1.0)


def _check_scalar(name: str, value: float, *, low: float, high: float = math.inf,
                  high_open: bool = False) -> None:
  ok = isinstance(value, (int, float, np.number)) and (
      low <= value < high if high_open else low <= value <= high)  # NaN fails both
  if not ok:
    raise ValueError(f'{name} must be in [{low}, {high}{")" if high_open else "]"}, '
                     f'got {value!r}.')


def _check_interval(name: str, value: Sequence[float], *, low: float, high: float = math.inf,
                    low_open: bool = False) -> tuple[float, float]:
  """Validates a `(min, max)` pair inside `[low, high]` (or `(low, high]`) and returns it."""
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be a (min, max) pair, got {value!r}.') from None
  if not ((low < lo if low_open else low <= lo) and lo <= hi <= high):
    raise ValueError(f'{name} must satisfy min <= max within {"(" if low_open else "["}{low}, '
                     f'{high}], got {value!r}.')
  return lo, hi


def _check_positive_int(name: str, value: int, *, odd: bool = False) -> None:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
      or (odd and value % 2 == 0)):
    raise ValueError(f'{name} must be {"an odd" if odd else "a"} positive integer, got {value!r}.')


def _check_image(image: jax.Array, op: str) -> jax.Array:
  image = jnp.asarray(image)
  if image.ndim != 3:
    raise ValueError(f'{op} expects a single [H, W, C] image, got shape {image.shape}.')
  return image


def _check_color_channels(image: jax.Array, op: str) -> int:
  channels = image.shape[-1]
  if channels not in (1, 3):
    raise ValueError(f'{op} needs an RGB (3-channel) or grayscale (1-channel) image, got '
                     f'{channels} channels (shape {image.shape}).')
  return channels


# Each op draws all its randomness as ONE vector of uniforms and slices it: every
# `jax.random` call inlines a threefry hash, and on CPU each one adds noticeable compile time
# to the jitted step, so one call per op (rather than split + several draws) keeps it small.


def _lerp(u: jax.Array, low: float, high: float) -> jax.Array:
  """Maps uniforms in [0, 1) to [low, high)."""
  return low + u * (high - low)


def _apply_with_probability(coin: jax.Array, probability: float,
                            fn: Callable[[jax.Array], jax.Array], image: jax.Array) -> jax.Array:
  """Returns `fn(image)` if the uniform `coin` < `probability`, else `image`."""
  # Static probabilities skip the branch, so `probability=1` costs nothing extra.
  if probability >= 1.0:
    return fn(image)
  if probability <= 0.0:
    return image
  # cond skips the work under plain jit; under vmap it lowers to a select of both branches.
  return jax.lax.cond(coin < probability, fn, lambda x: x, image)


def _sample_boxes(u_area: jax.Array, u_ratio: jax.Array, area: float,
                  scale: tuple[float, float],
                  ratio: tuple[float, float]) -> tuple[jax.Array, jax.Array]:
  """Maps uniforms to boxes `(sqrt(a / r), sqrt(a · r))` of area `a` ~ `area · U(scale)`."""
  target_area = area * _lerp(u_area, *scale)
  # Log-uniform aspect, so w/h = 2 is as likely as h/w = 2.
  aspect = jnp.exp(_lerp(u_ratio, math.log(ratio[0]), math.log(ratio[1])))
  return jnp.sqrt(target_area / aspect), jnp.sqrt(target_area * aspect)


def _bilinear(image: jax.Array, y: jax.Array, x: jax.Array,
              fill: float | None = None) -> jax.Array:
  """Samples `image` [H, W, C] bilinearly at float coordinates `y`, `x` [H', W'].

  Out-of-range neighbours read the nearest edge pixel if `fill` is None, else `fill`. Unlike
  `map_coordinates` (one channel at a time), a 4-neighbour gather handles all C at once.
  """
  height, width = image.shape[:2]
  y_floor, x_floor = jnp.floor(y), jnp.floor(x)
  weight_y, weight_x = y - y_floor, x - x_floor
  y_floor, x_floor = y_floor.astype(jnp.int32), x_floor.astype(jnp.int32)
  out = jnp.zeros(y.shape + image.shape[-1:], image.dtype)
  for dy, wy in ((0, 1.0 - weight_y), (1, weight_y)):
    for dx, wx in ((0, 1.0 - weight_x), (1, weight_x)):
      row, col = y_floor + dy, x_floor + dx
      value = image[jnp.clip(row, 0, height - 1), jnp.clip(col, 0, width - 1)]
      if fill is not None:
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        value = jnp.where(inside[..., None], value, jnp.asarray(fill, image.dtype))
      out = out + (wy * wx)[..., None].astype(image.dtype) * value
  # Rounding can step a hair outside [0, 1].
  return jnp.clip(out, 0.0, 1.0)


def _pixel_grid(height: int, width: int) -> tuple[jax.Array, jax.Array]:
  return jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                      jnp.arange(width, dtype=jnp.float32), indexing='ij')


def _grayscale(image: jax.Array) -> jax.Array:
  """Luma of an RGB image as [H, W, 1]; a 1-channel image is returned unchanged."""
  if image.shape[-1] == 1:
    return image
  return jnp.tensordot(image, jnp.asarray(_LUMA, image.dtype), axes=1)[..., None]


# ---------------------------------------------------------------------------------------------
# Geometric ops.

def identity() -> AugmentFn:
  """Returns the augmentation that leaves the image unchanged (ignores the key).

  Example:
    >>> float(augment.identity()(jax.random.key(0), jnp.ones((2, 3, 1))).sum())
    6.0
  """
  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    del key  # Deterministic.
    return _check_image(image, 'identity')
  return fn


def random_resized_crop(*, scale: Sequence[float] = (0.5, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> AugmentFn:
  """Crops a random box and resizes it back to the full H×W (bilinear).

  As torchvision's `RandomResizedCrop`: the box covers a fraction `scale` of the image area with
  log-uniform aspect `ratio` (width / height). Up to 10 boxes are drawn at once and the first
  that fits is used; if none fits, a centre crop with the aspect clamped into `ratio` is used.
  Unlike torchvision the box is continuous (no integer rounding), which keeps it jittable.

  Args:
    scale: `(min, max)` area fraction of the crop, within (0, 1].
    ratio: `(min, max)` aspect ratio (width / height) of the crop, positive.

  Returns:
    `fn(key, image) -> image` mapping `[H, W, C]` to `[H, W, C]`.

  Example:
    >>> crop = jax.jit(augment.random_resized_crop(scale=(0.3, 1.0)))
    >>> crop(jax.random.key(0), jnp.ones((13, 11, 3))).shape
    (13, 11, 3)
  """
  scale = _check_interval('scale', scale, low=0.0, high=1.0, low_open=True)
  ratio = _check_interval('ratio', ratio, low=0.0, low_open=True)

  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'random_resized_crop')
    height, width = image.shape[:2]
    u = jax.random.uniform(key, (2 * _NUM_ATTEMPTS + 2,))
    u_area, u_ratio = u[:_NUM_ATTEMPTS], u[_NUM_ATTEMPTS:2 * _NUM_ATTEMPTS]
    box_h, box_w = _sample_boxes(u_area, u_ratio, height * width, scale, ratio)
    # A tiny slack so scale=(1, 1) on a square image is not rejected for a rounding ulp.
    fits = (box_h <= height * (1 + 1e-6)) & (box_w <= width * (1 + 1e-6))
    index, any_fits = jnp.argmax(fits), jnp.any(fits)  # the first box that fits, if any
    # Fallback (static): the largest centre box whose aspect is clamped into `ratio`.
    aspect = min(max(width / height, ratio[0]), ratio[1])
    fallback_h, fallback_w = min(height, width / aspect), min(width, height * aspect)
    crop_h = jnp.minimum(jnp.where(any_fits, box_h[index], fallback_h), height)
    crop_w = jnp.minimum(jnp.where(any_fits, box_w[index], fallback_w), width)
    top = jnp.where(any_fits, u[-2], 0.5) * (height - crop_h)
    left = jnp.where(any_fits, u[-1], 0.5) * (width - crop_w)
    # Pixel centres (half-pixel convention): the full box maps each pixel onto itself.
    rows, cols = _pixel_grid(height, width)
    y = top + (rows + 0.5) * (crop_h / height) - 0.5
    x = left + (cols + 0.5) * (crop_w / width) - 0.5
    return _bilinear(image, y, x)
  return fn


def random_flip(*, probability: float = 0.5) -> AugmentFn:
  """Flips the image horizontally (left-right) with the given probability.

  Args:
    probability: chance of flipping, in [0, 1].

  Returns:
    `fn(key, image) -> image` mapping `[H, W, C]` to `[H, W, C]`.

  Example:
    >>> flip = augment.random_flip(probability=1.0)
    >>> flip(jax.random.key(0), jnp.arange(3.)[None, :, None] / 2)[0, :, 0].tolist()
    [1.0, 0.5, 0.0]
  """
  _check_probability('probability', probability)

  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'random_flip')
    # A select is cheaper than cond for a permutation; the flip itself is just a gather.
    return jnp.where(jax.random.bernoulli(key, probability), image[:, ::-1], image)
  return fn


def random_rotate90() -> AugmentFn:
  """Rotates the image by k·90° (counter-clockwise, as `np.rot90`), k uniform.

  Only rotations that keep the `[H, W, C]` shape are possible: k ∈ {0, 1, 2, 3} for a square
  image, but k ∈ {0, 2} (0° or 180°) when H != W, since 90° would swap H and W.

  Returns:
    `fn(key, image) -> image` mapping `[H, W, C]` to `[H, W, C]`.

  Example:
    >>> augment.random_rotate90()(jax.random.key(0), jnp.ones((13, 11, 1))).shape
    (13, 11, 1)
  """
  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'random_rotate90')
    turns = (0, 1, 2, 3) if image.shape[0] == image.shape[1] else (0, 2)
    branches = [lambda x, k=k: jnp.rot90(x, k, axes=(0, 1)) for k in turns]
    return jax.lax.switch(jax.random.randint(key, (), 0, len(turns)), branches, image)
  return fn


def random_affine(*, degrees: float = 15.0, shear: float = 10.0, translate: float = 0.1,
                  scale: Sequence[float] = (0.9, 1.1), fill: float = 0.0) -> AugmentFn:
  """Applies one random affine warp about the image centre (bilinear, inverse-mapped).

  As torchvision's `RandomAffine`: angle ~ U(-degrees, degrees), x-shear angle
  ~ U(-shear, shear), shift ~ U(-translate, translate) × (W, H) pixels, zoom ~ U(scale); the
  forward map is translate ∘ rotate ∘ shear ∘ scale. Each output pixel samples the input at the
  inverse-mapped point, and points outside the image read `fill` (0 = background for
  ink-high characters).

  Args:
    degrees: maximum absolute rotation in degrees, in [0, 180].
    shear: maximum absolute x-shear angle in degrees, in [0, 90).
    translate: maximum absolute shift as a fraction of width/height, in [0, 1].
    scale: `(min, max)` zoom factor, positive.
    fill: value of pixels mapped from outside the image, in [0, 1].

  Returns:
    `fn(key, image) -> image` mapping `[H, W, C]` to `[H, W, C]`.

  Example:
    >>> affine = jax.jit(augment.random_affine(degrees=30.))
    >>> affine(jax.random.key(0), jnp.ones((28, 28, 1))).shape
    (28, 28, 1)
  """
  _check_scalar('degrees', degrees, low=0.0, high=180.0)
  _check_scalar('shear', shear, low=0.0, high=90.0, high_open=True)
  _check_scalar('translate', translate, low=0.0, high=1.0)
  scale = _check_interval('scale', scale, low=0.0, low_open=True)
  _check_scalar('fill', fill, low=0.0, high=1.0)

  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'random_affine')
    height, width = image.shape[:2]
    u_angle, u_shear, u_shift_x, u_shift_y, u_zoom = jax.random.uniform(key, (5,))
    angle = jnp.deg2rad(_lerp(u_angle, -degrees, degrees))
    tan_shear = jnp.tan(jnp.deg2rad(_lerp(u_shear, -shear, shear)))
    shift_x = _lerp(u_shift_x, -translate, translate) * width
    shift_y = _lerp(u_shift_y, -translate, translate) * height
    zoom = _lerp(u_zoom, *scale)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    center_y, center_x = (height - 1) / 2, (width - 1) / 2
    rows, cols = _pixel_grid(height, width)
    dx = cols - center_x - shift_x
    dy = rows - center_y - shift_y
    # Closed-form inverse of zoom · R(angle) · [[1, tan_shear], [0, 1]]: no linalg in the step.
    x = ((cos + tan_shear * sin) * dx + (sin - tan_shear * cos) * dy) / zoom + center_x
    y = (-sin * dx + cos * dy) / zoom + center_y
    return _bilinear(image, y, x, fill=fill)
  return fn


def random_elastic(*, magnitude: float = 1.0, smoothness: float = 3.0,
                   probability: float = 1.0, fill: float = 0.0) -> AugmentFn:
  """Warps the image by a smooth random displacement field (Simard et al. 2003), any C.

  Each pixel samples the input at its own position plus a displacement `(dy, dx)`: Gaussian
  white noise blurred by a Gaussian of standard deviation `smoothness` pixels and rescaled so
  that each component has standard deviation `magnitude` pixels. Unlike an affine warp it bends
  strokes locally, the way two people's drawings of one character differ.

  Args:
    magnitude: standard deviation of each displacement component in pixels, >= 0.
    smoothness: standard deviation of the smoothing Gaussian in pixels, > 0; larger values give
      broader, gentler bends.
    probability: chance of warping, in [0, 1].
    fill: value of pixels displaced from outside the image, in [0, 1].

  Returns:
    `fn(key, image) -> image` mapping `[H, W, C]` to `[H, W, C]`.

  Example:
    >>> elastic = jax.jit(augment.random_elastic(magnitude=1.5))
    >>> elastic(jax.random.key(0), jnp.ones((28, 28, 1))).shape
    (28, 28, 1)
  """
  _check_scalar('magnitude', magnitude, low=0.0)
  _check_scalar('smoothness', smoothness, low=0.0)
  if smoothness == 0:
    raise ValueError('smoothness must be > 0, got 0.')
  _check_probability('probability', probability)
  _check_scalar('fill', fill, low=0.0, high=1.0)
  radius = math.ceil(3 * smoothness)
  offsets = np.arange(-radius, radius + 1)
  taps = np.exp(-0.5 * (offsets / smoothness) ** 2)
  taps = taps / taps.sum()
  # Blurring unit white noise with the separable kernel k_i k_j leaves a standard deviation of
  # sqrt(sum_ij k_i^2 k_j^2) = sum_i k_i^2 (away from the borders): dividing by it makes the
  # displacement's standard deviation `magnitude` whatever the smoothness.
  noise_to_pixels = magnitude / float(np.sum(taps ** 2))

  def warp(key: jax.Array, image: jax.Array) -> jax.Array:
    height, width = image.shape[:2]
    noise = jax.random.normal(key, (2, height, width), image.dtype)
    # The reflect-padded 1-D blurs along each axis as [size, size] matrices (as gaussian_blur).
    rows = jnp.asarray(np.tensordot(taps, _reflect_tap_matrices(offsets, height), axes=1),
                       image.dtype)
    cols = jnp.asarray(np.tensordot(taps, _reflect_tap_matrices(offsets, width), axes=1),
                       image.dtype)
    dy, dx = noise_to_pixels * jnp.einsum('ij,djw,vw->div', rows, noise, cols)
    grid_y, grid_x = _pixel_grid(height, width)
    return _bilinear(image, grid_y + dy, grid_x + dx, fill=fill)

  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'random_elastic')
    key_noise, key_coin = jax.random.split(key)
    coin = jax.random.uniform(key_coin)
    return _apply_with_probability(coin, probability, functools.partial(warp, key_noise), image)
  return fn


def random_erasing(*, probability: float = 0.5, scale: Sequence[float] = (0.02, 0.2),
                   ratio: Sequence[float] = (0.3, 3.3), value: float = 0.0) -> AugmentFn:
  """Sets a random rectangle to `value` with the given probability (Zhong et al., 2020).

  As torchvision's `RandomErasing`: the rectangle covers a fraction `scale` of the area with
  log-uniform aspect `ratio` (height / width), rounded to whole pixels and strictly smaller than
  the image. Up to 10 rectangles are drawn at once and the first that fits is used; if none
  fits, the image is unchanged. The rectangle is a mask built from iota comparisons, so shapes
  stay static.

  Args:
    probability: chance of erasing, in [0, 1].
    scale: `(min, max)` area fraction of the rectangle, within (0, 1].
    ratio: `(min, max)` aspect ratio (height / width) of the rectangle, positive.
    value: fill value of the rectangle, in [0, 1].

  Returns:
    `fn(key, image) -> image` mapping `[H, W, C]` to `[H, W, C]`.

  References:
    Zhong et al., "Random Erasing Data Augmentation", AAAI 2020.

  Example:
    >>> erase = jax.jit(augment.random_erasing(probability=1., scale=(.1, .1), ratio=(1., 1.)))
    >>> int((erase(jax.random.key(0), jnp.ones((10, 10, 1))) == 0).sum())
    9
  """
  _check_probability('probability', probability)
  scale = _check_interval('scale', scale, low=0.0, high=1.0, low_open=True)
  ratio = _check_interval('ratio', ratio, low=0.0, low_open=True)
  _check_scalar('value', value, low=0.0, high=1.0)

  def erase(u: jax.Array, image: jax.Array) -> jax.Array:
    height, width = image.shape[:2]
    u_area, u_ratio = u[:_NUM_ATTEMPTS], u[_NUM_ATTEMPTS:2 * _NUM_ATTEMPTS]
    # `_sample_boxes` returns (sqrt(a / r), sqrt(a · r)); torchvision's ratio is h / w.
    box_w, box_h = _sample_boxes(u_area, u_ratio, height * width, scale, ratio)
    box_h = jnp.round(box_h).astype(jnp.int32)
    box_w = jnp.round(box_w).astype(jnp.int32)
    fits = (box_h >= 1) & (box_h < height) & (box_w >= 1) & (box_w < width)
    index, any_fits = jnp.argmax(fits), jnp.any(fits)  # the first box that fits, if any
    erase_h = jnp.where(any_fits, box_h[index], 0)
    erase_w = jnp.where(any_fits, box_w[index], 0)
    # Uniform integers in [0, size - erase]; the clip guards against u rounding up to 1.
    top = jnp.minimum(jnp.floor(u[-3] * (height - erase_h + 1)).astype(jnp.int32),
                      height - erase_h)
    left = jnp.minimum(jnp.floor(u[-2] * (width - erase_w + 1)).astype(jnp.int32),
                       width - erase_w)
    rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
    mask = (rows >= top) & (rows < top + erase_h) & (cols >= left) & (cols < left + erase_w)
    return jnp.where(mask[..., None], jnp.asarray(value, image.dtype), image)

  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'random_erasing')
    u = jax.random.uniform(key, (2 * _NUM_ATTEMPTS + 3,))
    return _apply_with_probability(u[-1], probability, functools.partial(erase, u), image)
  return fn


# ---------------------------------------------------------------------------------------------
# Photometric ops.

def _shift_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
  """Rotates the hue of an RGB image by `shift` turns, keeping HSV saturation and value.

  colorsys' rgb_to_hsv fused with dm-pix's branch-free hsv_to_rgb via `v · s = max − min`: the
  HSV round trip dominates colour jitter on CPU, and this skips its divisions and mods.
  """
  red, green, blue = image[..., 0], image[..., 1], image[..., 2]
  value = jnp.max(image, axis=-1)
  delta = value - jnp.min(image, axis=-1)
  # Gray pixels (delta = 0) get an arbitrary hue that the `delta ·` below cancels; the safe
  # denominator only keeps them free of NaNs.
  safe_delta = jnp.where(delta > 0, delta, 1.0)
  # Pick the sector by comparing channels, not by `red == value`: XLA may recompute `value` in
  # another fusion (e.g. with FMA) so that no channel equals it exactly, which silently picked
  # the wrong formula. The formulas agree (mod 6) at sector boundaries, so ties are harmless.
  red_max = (red >= green) & (red >= blue)
  green_max = ~red_max & (green >= blue)
  hue6 = jnp.where(red_max, (green - blue) / safe_delta,
                   jnp.where(green_max, 2.0 + (blue - red) / safe_delta,
                             4.0 + (red - green) / safe_delta))  # hue in sixths of a turn
  hue6 = hue6 + 6.0 * shift

  def channel(n):
    k = n + hue6
    k = k - 6.0 * jnp.floor(k / 6.0)  # k mod 6, cheaper than jnp.mod's sign fix-ups
    return value - delta * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
  """`factor · image + (1 − factor) · other`, clipped to [0, 1] (PIL ImageEnhance)."""
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def color_jitter(*, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, probability: float = 0.8) -> AugmentFn:
  """Randomly changes brightness, contrast, saturation and hue, in a random order.

  As torchvision's `ColorJitter` (applied with `probability`, as in SimCLR): brightness factor
  ~ U(max(0, 1 − brightness), 1 + brightness) scales the image; contrast factor
  ~ U(max(0, 1 − contrast), 1 + contrast) blends with the mean luma; saturation factor
  ~ U(max(0, 1 − saturation), 1 + saturation) blends with the luma image; hue shift
  ~ U(−hue, hue) rotates the HSV hue (in turns), keeping saturation and value. Each step clips
  to [0, 1]. A strength of 0 drops that adjustment statically. On a 1-channel image only
  brightness and contrast act (gray has no saturation or hue).

  Args:
    brightness: brightness strength, >= 0.
    contrast: contrast strength, >= 0.
    saturation: saturation strength, >= 0.
    hue: maximum absolute hue shift in turns, in [0, 0.5].
    probability: chance of jittering at all, in [0, 1].

  Returns:
    `fn(key, image) -> image` mapping `[H, W, C]` to `[H, W, C]`; it raises a ValueError at
    trace time unless C is 1 or 3.

  Example:
    >>> jitter = jax.jit(augment.color_jitter(probability=1.0))
    >>> jitter(jax.random.key(0), jnp.full((12, 10, 3), 0.5)).shape
    (12, 10, 3)
  """
  _check_scalar('brightness', brightness, low=0.0)
  _check_scalar('contrast', contrast, low=0.0)
  _check_scalar('saturation', saturation, low=0.0)
  _check_scalar('hue', hue, low=0.0, high=0.5)
  _check_probability('probability', probability)

  # Brightness, contrast and saturation are all PIL blends `f · image + (1 − f) · other`, with
  # `other` black, mean luma or the luma image, so one cheap blend serves all three.
  brightness_id, contrast_id, saturation_id = range(3)

  def adjust_blend(image, kind, factor):
    # Scalar one-hot weights pick `other` without [H, W] selects.
    gray = _grayscale(image)
    other = ((kind == contrast_id) * jnp.mean(gray) + (kind == saturation_id) * gray)
    return _blend(image, other.astype(image.dtype), factor)

  def adjust_hue(image, shift):
    return jnp.clip(_shift_hue(image, shift), 0.0, 1.0)

  def factor_range(strength):
    return max(0.0, 1.0 - strength), 1.0 + strength

  # (kind, factor range, strength, acts on gray images); zero strengths are dropped statically.
  blend_candidates = [(brightness_id, factor_range(brightness), brightness, True),
                      (contrast_id, factor_range(contrast), contrast, True),
                      (saturation_id, factor_range(saturation), saturation, False)]

  def jitter(blends, use_hue, u, image):
    num_blends = len(blends)
    # A uniform random order of all adjustments (torchvision/SimCLR) is a uniform order of the
    # blends (argsort of uniforms) with hue inserted at a uniform position.
    order = jnp.argsort(u[:num_blends])
    kinds = jnp.asarray([kind for kind, _ in blends], jnp.int32)[order]
    factors = jnp.asarray([_lerp(u[num_blends + i], *bounds)
                           for i, (_, bounds) in enumerate(blends)], jnp.float32)[order]
    if not use_hue:
      for step in range(num_blends):
        image = adjust_blend(image, kinds[step], factors[step])
      return image
    # The HSV round trip is the costly part, and under vmap a switch over positions would run it
    # at every position. Instead run it once, between two passes of blends in which factor 1
    # (an exact no-op) disables the blends on the wrong side of hue.
    position = jnp.floor(u[2 * num_blends] * (num_blends + 1))
    for step in range(num_blends):
      image = adjust_blend(image, kinds[step], jnp.where(step < position, factors[step], 1.0))
    image = adjust_hue(image, _lerp(u[2 * num_blends + 1], -hue, hue))
    for step in range(num_blends):
      image = adjust_blend(image, kinds[step], jnp.where(step >= position, factors[step], 1.0))
    return image

  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'color_jitter')
    is_rgb = _check_color_channels(image, 'color_jitter') == 3
    blends = [(kind, bounds) for kind, bounds, strength, on_gray in blend_candidates
              if strength > 0 and (is_rgb or on_gray)]
    use_hue = is_rgb and hue > 0
    if not blends and not use_hue:
      return image
    # Layout: blend order, blend factors, hue position, hue shift, coin.
    u = jax.random.uniform(key, (2 * len(blends) + 3,))
    return _apply_with_probability(u[-1], probability,
                                   functools.partial(jitter, blends, use_hue, u), image)
  return fn


def random_grayscale(*, probability: float = 0.2) -> AugmentFn:
  """Replaces an RGB image by its luma (ITU-R 601-2) in all 3 channels, with a probability.

  A 1-channel image is already grayscale and is returned unchanged.

  Args:
    probability: chance of converting, in [0, 1].

  Returns:
    `fn(key, image) -> image` mapping `[H, W, C]` to `[H, W, C]`; it raises a ValueError at
    trace time unless C is 1 or 3.

  Example:
    >>> gray = augment.random_grayscale(probability=1.0)
    >>> red = jnp.zeros((12, 10, 3)).at[..., 0].set(1.0)
    >>> [round(v, 3) for v in gray(jax.random.key(0), red)[0, 0].tolist()]
    [0.299, 0.299, 0.299]
  """
  _check_probability('probability', probability)

  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'random_grayscale')
    if _check_color_channels(image, 'random_grayscale') == 1:
      return image
    gray = jnp.clip(jnp.broadcast_to(_grayscale(image), image.shape), 0.0, 1.0)
    return jnp.where(jax.random.bernoulli(key, probability), gray, image)
  return fn


def _reflect_indices(index: np.ndarray, size: int) -> np.ndarray:
  """Maps any integer index into [0, size) by mirror reflection (numpy 'reflect' padding)."""
  if size == 1:
    return np.zeros_like(index)
  period = 2 * (size - 1)
  index = np.abs(index) % period
  return np.where(index >= size, period - index, index)


def _reflect_tap_matrices(offsets: np.ndarray, size: int) -> np.ndarray:
  """[K, size, size] 0/1 matrices: entry (k, i, j) = 1 if tap k (at `offsets[k]`) of output i
  reads input j under reflect padding; contracting K with taps gives the blur's matrix."""
  return np.eye(size, dtype=np.float32)[_reflect_indices(np.arange(size)[:, None] + offsets,
                                                         size)].transpose(1, 0, 2)


def gaussian_blur(*, sigma: Sequence[float] = (0.1, 2.0), kernel_size: int | None = None,
                  probability: float = 0.5) -> AugmentFn:
  """Blurs with a Gaussian of random width, with the given probability (any C).

  sigma ~ U(sigma); the blur is separable (rows then columns) with reflect padding, written as
  two banded matrix products, so it works for images smaller than the kernel.

  Args:
    sigma: `(min, max)` standard deviation in pixels, positive.
    kernel_size: odd number of taps K; default `2 · ceil(3 · max sigma) + 1`.
    probability: chance of blurring, in [0, 1].

  Returns:
    `fn(key, image) -> image` mapping `[H, W, C]` to `[H, W, C]`.

  Example:
    >>> blur = jax.jit(augment.gaussian_blur(probability=1.0))
    >>> round(float(blur(jax.random.key(0), jnp.full((13, 11, 1), 0.5)).max()), 5)
    0.5
  """
  sigma = _check_interval('sigma', sigma, low=0.0, low_open=True)
  if kernel_size is None:
    kernel_size = 2 * math.ceil(3 * sigma[1]) + 1
  _check_positive_int('kernel_size', kernel_size, odd=True)
  _check_probability('probability', probability)
  radius = kernel_size // 2
  offsets = np.arange(-radius, radius + 1)

  def blur(u_sigma: jax.Array, image: jax.Array) -> jax.Array:
    height, width = image.shape[:2]
    std = _lerp(u_sigma, *sigma)
    taps = jnp.exp(-0.5 * (jnp.asarray(offsets, image.dtype) / std) ** 2)
    taps = taps / jnp.sum(taps)
    # The reflect-padded 1-D blur along an axis is a banded [size, size] matrix (the static
    # tap pattern weighted by the sampled taps); two matmuls run on the CPU's GEMM kernels,
    # about 3x faster than summing K shifted slices at 84×84.
    rows = jnp.tensordot(taps, _reflect_tap_matrices(offsets, height), axes=1)  # [H, H]
    cols = jnp.tensordot(taps, _reflect_tap_matrices(offsets, width), axes=1)   # [W, W]
    image = jnp.einsum('ij,jwc,vw->ivc', rows, image, cols)
    return jnp.clip(image, 0.0, 1.0)

  def fn(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'gaussian_blur')
    u_sigma, coin = jax.random.uniform(key, (2,))
    return _apply_with_probability(coin, probability, functools.partial(blur, u_sigma), image)
  return fn


# ---------------------------------------------------------------------------------------------
# Composition.

def chain(*fns: AugmentFn) -> AugmentFn:
  """Composes augmentations left to right, each with its own sub-key.

  Args:
    *fns: augmentations `fn(key, image) -> image`; none gives the identity.

  Returns:
    `fn(key, image) -> image` applying `fns[0]`, then `fns[1]`, ...

  Example:
    >>> simclr = augment.chain(augment.random_resized_crop(), augment.random_flip(),
    ...                        augment.color_jitter(), augment.random_grayscale())
    >>> jax.jit(simclr)(jax.random.key(0), jnp.ones((12, 10, 3))).shape
    (12, 10, 3)
  """
  for index, fn in enumerate(fns):
    if not callable(fn):
      raise ValueError(f'fns[{index}] must be an augmentation fn(key, image), got {fn!r}.')

  def chained(key: PRNGKey, image: jax.Array) -> jax.Array:
    image = _check_image(image, 'chain')
    keys = jax.random.split(key, len(fns))
    for index, fn in enumerate(fns):
      image = fn(keys[index], image)
    return image
  return chained


def views(key: PRNGKey, image: jax.Array, augment_fn: AugmentFn, num_views: int) -> jax.Array:
  """Draws `num_views` independent augmentations of one image (vmap over split keys).

  Args:
    key: PRNG key.
    image: `[H, W, C]` float image in [0, 1].
    augment_fn: augmentation `fn(key, image) -> image`.
    num_views: number of views, a positive integer.

  Returns:
    `[num_views, H, W, C]` views.

  Example:
    >>> augment.views(jax.random.key(0), jnp.ones((13, 11, 1)), augment.random_flip(), 3).shape
    (3, 13, 11, 1)
  """
  _check_positive_int('num_views', num_views)
  image = _check_image(image, 'views')
  return jax.vmap(augment_fn, in_axes=(0, None))(jax.random.split(key, num_views), image)
