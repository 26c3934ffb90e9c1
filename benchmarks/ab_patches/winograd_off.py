"""step_ab / profile_step patch: no Winograd convolutions (every 3×3 convolution on the direct
path), by raising `layers.WINOGRAD_MIN_CHANNELS` above any channel count while the step compiles."""
from unittest import mock

from jmeta.models import layers


def patched():
  return mock.patch.object(layers, "WINOGRAD_MIN_CHANNELS", 1 << 30)
