"""step_ab patch: the Winograd forward convolution over chunks of $AB_FORWARD_CHUNK images
(default 15), concatenated, instead of over all images at once (a smaller working set per
product)."""
import os
from unittest import mock

import jax.numpy as jnp

from jmeta.models import winograd

_library_conv = winograd.conv3x3
IMAGES_PER_CHUNK = int(os.environ.get("AB_FORWARD_CHUNK", "15"))


def conv3x3(x, kernel, *, output_tile=None):
  if x.shape[0] <= IMAGES_PER_CHUNK:
    return _library_conv(x, kernel, output_tile=output_tile)
  return jnp.concatenate([_library_conv(x[start:start + IMAGES_PER_CHUNK], kernel,
                                        output_tile=output_tile)
                          for start in range(0, x.shape[0], IMAGES_PER_CHUNK)])


def patched():
  return mock.patch.object(winograd, "conv3x3", conv3x3)
