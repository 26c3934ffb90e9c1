"""ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019): the larger few-shot backbone.

4 residual blocks; each is 3 × [3×3 conv, norm, leaky ReLU(0.1)] (no activation after the
third norm) plus a 1×1-conv + norm shortcut, then leaky ReLU and a 2×2 max-pool. Widths
`width × (1, 2.5, 5, 10)` (64 → 64/160/320/640). Features are the global average pool.
"""
import jax
import jax.numpy as jnp

from jmeta.models import layers
from jmeta.types import Model, Params, PRNGKey

WIDTH_MULTIPLIERS = (1.0, 2.5, 5.0, 10.0)


def make(*, image_size: int = 84, channels: int = 3, width: int = 64, norm: str = "batch",
         num_groups: int = 8, conv_impl: str = "matmul") -> Model:
  """Builds ResNet-12.

  Args:
    image_size: input height = width (≥ 16: four 2×2 poolings).
    channels: input channels.
    width: channels of the first block; the others are 2.5×, 5×, 10× (rounded).
    norm: "batch" (transductive batch statistics), "group" or "none".
    num_groups: groups for norm="group" (must divide every block width).
    conv_impl: see `layers.conv2d`.

  Returns:
    A `Model`; `apply(params, images [B, S, S, C]) -> [B, 10·width]`.
  """
  layers.check_choice("norm", norm, layers.NORM_MODES)
  layers.check_choice("conv_impl", conv_impl, layers.CONV_IMPLS)
  widths = [int(round(width * m)) for m in WIDTH_MULTIPLIERS]
  if norm == "group" and any(w % num_groups for w in widths):
    raise ValueError(f"num_groups={num_groups} must divide every block width {widths}.")
  if image_size < 16:
    raise ValueError(f"image_size={image_size} is too small for ResNet-12's four poolings; "
                     "allowed: >= 16.")

  def conv_init(key, size, in_channels, out_channels):
    return layers.uniform_init(key, (size, size, in_channels, out_channels),
                               size * size * in_channels)

  def norm_init(out_channels):
    return {"scale": jnp.ones((out_channels,)), "offset": jnp.zeros((out_channels,))}

  def init(key: PRNGKey) -> Params:
    params = {}
    in_channels = channels
    for index, (block_key, out_channels) in enumerate(zip(jax.random.split(key, 4), widths)):
      keys = jax.random.split(block_key, 4)
      block = {f"conv{i}": conv_init(keys[i], 3, in_channels if i == 0 else out_channels,
                                     out_channels) for i in range(3)}
      block.update({f"norm{i}": norm_init(out_channels) for i in range(3)})
      block["shortcut_conv"] = conv_init(keys[3], 1, in_channels, out_channels)
      block["shortcut_norm"] = norm_init(out_channels)
      params[f"block{index}"] = block
      in_channels = out_channels
    return params

  def normalize(x, p):
    return layers.normalize(x, p["scale"], p["offset"], mode=norm, num_groups=num_groups)

  def apply(params: Params, images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, channels):
      raise ValueError(f"ResNet-12 expects images [B, {image_size}, {image_size}, {channels}], "
                       f"got {images.shape}; set image_size/channels to match the data.")
    x = images
    for index in range(4):
      block = params[f"block{index}"]
      shortcut = normalize(layers.conv2d(x, block["shortcut_conv"], impl=conv_impl),
                           block["shortcut_norm"])
      for i in range(3):
        x = normalize(layers.conv2d(x, block[f"conv{i}"], impl=conv_impl), block[f"norm{i}"])
        if i < 2:
          x = jax.nn.leaky_relu(x, 0.1)
      x = layers.max_pool2x2(jax.nn.leaky_relu(x + shortcut, 0.1))
    return x.mean(axis=(1, 2))

  return Model(init=init, apply=apply, embedding_dim=widths[-1])
