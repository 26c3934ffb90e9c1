"""step_ab patch: Winograd's tile transforms without their optimization barriers (the row and
column passes free to fuse into one loop), by making `lax.optimization_barrier` the identity
while the step is traced. jmeta calls it only in `winograd.py`."""
import contextlib

import jax


@contextlib.contextmanager
def patched():
  barrier = jax.lax.optimization_barrier
  jax.lax.optimization_barrier = lambda operand: operand
  try:
    yield
  finally:
    jax.lax.optimization_barrier = barrier
