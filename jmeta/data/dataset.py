"""The in-memory array layout every jmeta data source returns."""
from typing import NamedTuple

import numpy as np
from PIL import Image


class Dataset(NamedTuple):
  """A labeled image dataset held in host memory.

  Every loader (Omniglot, MNIST, digits, TFDS) returns this layout, so tasks, training and
  evaluation never care where images came from. Ink/foreground is high, background low.
  """
  images: np.ndarray        # [num_images, H, W, C] uint8 in 0..255 (ink high)
  labels: np.ndarray        # [num_images] int32 in 0..num_classes-1
  class_names: tuple        # [num_classes] str, class_names[label]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple:
    return tuple(self.images.shape[1:])

  def as_float(self) -> np.ndarray:
    """Images as float32 in [0, 1], the input convention of every jmeta model."""
    return self.images.astype(np.float32) / 255.0

  def resized(self, image_size: int) -> "Dataset":
    """Returns a copy with images resized to ``image_size`` x ``image_size`` (`resize_image`)."""
    Dataset._check_image_size(image_size)
    if tuple(self.images.shape[1:3]) == (image_size, image_size):
      return self
    images = np.stack([Dataset.resize_image(x, image_size) for x in self.images]) if len(
        self.images) else np.zeros((0, image_size, image_size, self.images.shape[-1]), np.uint8)
    return self._replace(images=images)

  @staticmethod
  def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """Resizes one image to a square uint8 ``[image_size, image_size, C]`` array.

    Each channel is resized as a float32 PIL image (no intermediate 8-bit rounding), then
    rounded and clipped to 0..255. Shrinking uses antialiased ``LANCZOS``; enlarging uses
    ``BILINEAR`` (no ringing on tiny inputs such as 8x8 digits). Both kernels are continuous
    and symmetric, so resizing commutes exactly with ``np.rot90`` and flips (PIL's ``BOX``
    does not: it counts whole pixels whose centres fall in the box). A zero background stays
    exactly 0 beyond the kernel's reach from ink; right next to ink, LANCZOS ringing can leave
    small values (negative lobes are clipped to 0).

    Args:
      image: ``[H, W]`` or ``[H, W, C]`` array, uint8 or float, on the 0..255 scale.
      image_size: Output height and width, a positive int.

    Returns:
      ``[image_size, image_size, C]`` uint8 (``C = 1`` for a 2-D input), rounded to nearest.
    """
    Dataset._check_image_size(image_size)
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[:, :, None]
    if image.ndim != 3:
      raise ValueError(f"expected an [H, W] or [H, W, C] image, got shape {image.shape}")
    height, width = image.shape[:2]
    size = int(image_size)
    if (height, width) == (size, size) and image.dtype == np.uint8:
      return image
    shrink = size <= height and size <= width
    resample = Image.Resampling.LANCZOS if shrink else Image.Resampling.BILINEAR
    out = np.empty((size, size, image.shape[2]), np.float32)
    for c in range(image.shape[2]):
      channel = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))
      out[:, :, c] = np.asarray(channel.resize((size, size), resample))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

  @staticmethod
  def _check_image_size(image_size) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or (
        image_size < 1):
      raise ValueError(f"image_size must be a positive int, got {image_size!r}")
