"""step_ab patch: Winograd's tile windows as strided slices of the padded input instead of one
reshape into stride-sized blocks and unstrided slices (`winograd._windows`)."""
from unittest import mock

import jax
import jax.numpy as jnp

from jmeta.models import winograd


def _windows(value, axis, tiles, stride, size):
  length = stride * (tiles - 1) + size
  padding = [(0, 0)] * value.ndim
  padding[axis] = (0, max(0, length - value.shape[axis]))
  padded = jnp.pad(value, padding)
  return [jax.lax.slice_in_dim(padded, j, j + stride * (tiles - 1) + 1, stride=stride, axis=axis)
          for j in range(size)]


def patched():
  return mock.patch.object(winograd, "_windows", _windows)
