"""step_ab patch: Winograd's tile transforms without their optimization barriers (the row and
column passes free to fuse into one loop), by making `lax.optimization_barrier` the identity
while the step is traced. jmeta calls it only in `winograd.py`."""
from unittest import mock

import jax


def patched():
  return mock.patch.object(jax.lax, "optimization_barrier", lambda operand: operand)
