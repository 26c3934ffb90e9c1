"""step_ab patch: per-task kernels under `vmap` unrolled into one convolution (and one weight
gradient) per task, stacked, as before session 23, instead of the grouped primitives: the
batching rules bind through `layers._per_group` (a loop over the leading axis) instead of
`layers._bind_grouped`."""
from unittest import mock

from jmeta.models import layers


def patched():
  return mock.patch.object(layers, "_bind_grouped", layers._per_group)  # pylint: disable=protected-access
