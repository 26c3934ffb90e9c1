"""step_ab patch: Winograd weight-gradient products as standard batched matmuls, [t, c, p] x
[t, p, o] (the input tiles transposed first), instead of contracting both operands' tile axis
([t, p, c] x [t, p, o]), which XLA:CPU leaves to its own `dot_general` rather than YNNPACK."""
from unittest import mock

import jax.numpy as jnp

from jmeta.models import winograd

def conv3x3_weight_grad(x, g, *, output_tile=None,
                        images_per_chunk=winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK):
  output_tile = winograd._resolve_output_tile(output_tile, x)  # pylint: disable=protected-access
  products = 0
  for start in range(0, x.shape[0], images_per_chunk):
    chunk = slice(start, start + images_per_chunk)
    tiles = winograd._input_tiles(x[chunk], output_tile)  # pylint: disable=protected-access
    cotangent_tiles = winograd._output_grad_tiles(g[chunk], output_tile)  # pylint: disable=protected-access
    products += jnp.einsum("tcp,tpo->tco", tiles.transpose(0, 2, 1), cotangent_tiles)
  return winograd._kernel_untransform(products, output_tile)  # pylint: disable=protected-access


def patched():
  return mock.patch.object(winograd, "conv3x3_weight_grad", conv3x3_weight_grad)
