"""step_ab patch: the Winograd kernel transform G k Gᵀ (and Gᵀ M G back) as one matmul with
kron(G, G) over the 9 kernel taps, instead of two passes along the kernel's rows and columns."""
from unittest import mock

import jax.numpy as jnp
import numpy as np

from jmeta.models import winograd

def _kron(output_tile):
  transform = winograd._TRANSFORMS[output_tile].kernel  # pylint: disable=protected-access
  g = np.array([[float(value) for value in row] for row in transform], np.float32)
  return np.kron(g, g)  # [(m+2)², 9]


def kernel_transform(kernel, output_tile):
  matrix = _kron(output_tile)
  return (jnp.asarray(matrix) @ kernel.reshape(9, -1)).reshape(
      (matrix.shape[0],) + kernel.shape[2:])


def kernel_untransform(products, output_tile):
  matrix = _kron(output_tile)
  return (jnp.asarray(matrix.T) @ products.reshape(matrix.shape[0], -1)).reshape(
      (3, 3) + products.shape[1:])


def patched():
  return mock.patch.multiple(winograd, _kernel_transform=kernel_transform,
                             _kernel_untransform=kernel_untransform)
