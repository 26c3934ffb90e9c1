"""Conv4: the standard few-shot backbone (Vinyals et al. 2016; Finn et al. 2017).

4 blocks of [3×3 conv, `width` channels, norm, ReLU, 2×2 max-pool]; 28×28 inputs give
`width`-d features (28→14→7→3→1), 84×84 give 5·5·`width` = 1600-d features for width 64.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from jmeta.models import layers
from jmeta.types import Model, Params, PRNGKey


def _spatial_after_blocks(size: int, num_blocks: int) -> int:
  for _ in range(num_blocks):
    size //= 2
  return size


def make(*, image_size: int = 28, channels: int = 1, width: int = 64, num_blocks: int = 4,
         norm: str = "batch", num_groups: int = 8, conv_impl: str = "matmul",
         conv_bias: Optional[bool] = None) -> Model:
  """Builds Conv4.

  Args:
    image_size: input height = width (28 for Omniglot, 84 for mini-ImageNet).
    channels: input channels.
    width: channels of every conv.
    num_blocks: conv blocks (4 is Conv4).
    norm: "batch" (transductive batch statistics), "group" or "none".
    num_groups: groups for norm="group".
    conv_impl: "matmul" (fast under vmap on CPU) or "xla".
    conv_bias: whether `init` gives each convolution a bias. Default: unless norm="batch".
      Batch norm subtracts each channel's batch mean, so a per-channel constant before it changes
      nothing but rounding, and its true gradient is exactly zero: leaving it out saves a
      reduction per convolution at every derivative order (≈ 9% of a second-order MAML step,
      docs/PERFORMANCE.md), and there is no zero-gradient parameter for Adam to blow float noise
      into. True mirrors a PyTorch Conv4 with biases (e.g. the peer harness's weights). `apply`
      adds a bias wherever the params have one, whatever this says.

  Returns:
    A `Model`; `apply(params, images)` maps `[B, image_size, image_size, channels]` floats in
    [0, 1] to `[B, embedding_dim]` features.
  """
  layers.check_choice("norm", norm, layers.NORM_MODES)
  layers.check_choice("conv_impl", conv_impl, layers.CONV_IMPLS)
  if norm == "group" and width % num_groups:
    raise ValueError(f"num_groups={num_groups} must divide width={width} for norm='group'.")
  spatial = _spatial_after_blocks(image_size, num_blocks)
  if spatial < 1:
    raise ValueError(f"image_size={image_size} is too small for num_blocks={num_blocks} "
                     "2×2 poolings.")
  embedding_dim = spatial * spatial * width
  if conv_bias is None:
    conv_bias = norm != "batch"

  def init(key: PRNGKey) -> Params:
    params = {}
    in_channels = channels
    for index, block_key in enumerate(jax.random.split(key, num_blocks)):
      key_kernel, key_bias = jax.random.split(block_key)  # the same kernels either way
      fan_in = 9 * in_channels
      conv = {"kernel": layers.uniform_init(key_kernel, (3, 3, in_channels, width), fan_in)}
      if conv_bias:
        conv["bias"] = layers.uniform_init(key_bias, (width,), fan_in)
      params[f"block{index}"] = {
          "conv": conv,
          "norm": {"scale": jnp.ones((width,)), "offset": jnp.zeros((width,))},
      }
      in_channels = width
    return params

  def apply(params: Params, images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, channels):
      raise ValueError(f"Conv4 expects images [B, {image_size}, {image_size}, {channels}], got "
                       f"{images.shape}; set image_size/channels to match the data.")
    x = images
    for index in range(num_blocks):
      block = params[f"block{index}"]
      kernel, bias = block["conv"]["kernel"], block["conv"].get("bias")
      scale, offset = block["norm"]["scale"], block["norm"]["offset"]
      if norm == "batch":  # the same function, with the pooling first (see the layer)
        x = layers.conv_batch_norm_relu_max_pool(x, kernel, bias, scale, offset, impl=conv_impl)
      else:
        x = layers.conv2d(x, kernel, bias, impl=conv_impl)
        x = layers.normalize(x, scale, offset, mode=norm, num_groups=num_groups)
        x = layers.max_pool2x2(jax.nn.relu(x))
    return x.reshape(x.shape[0], -1)

  return Model(init=init, apply=apply, embedding_dim=embedding_dim)
