"""step_ab patch: a one-channel input's convolution (Conv4's first block) as XLA's library
convolution, as before session 23, instead of `layers._conv_one_channel`'s multiply-adds."""
from unittest import mock

from jmeta.models import layers


def patched():
  return mock.patch.object(layers, "_conv_one_channel", layers._conv_impl)  # pylint: disable=protected-access
