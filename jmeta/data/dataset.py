"""The in-memory array layout every jmeta data source returns."""
from typing import NamedTuple

import numpy as np


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
