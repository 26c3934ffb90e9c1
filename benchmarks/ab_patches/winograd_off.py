"""step_ab / profile_step patch: no Winograd convolutions (every 3×3 convolution on the direct
path), by raising `layers.WINOGRAD_MIN_CHANNELS` above any channel count while the step compiles."""
import contextlib

from jmeta.models import layers


@contextlib.contextmanager
def patched():
  old = layers.WINOGRAD_MIN_CHANNELS
  layers.WINOGRAD_MIN_CHANNELS = 1 << 30
  try:
    yield
  finally:
    layers.WINOGRAD_MIN_CHANNELS = old
