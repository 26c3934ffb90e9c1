"""Pure layer functions shared by jmeta's models.

Convolutions are written as patch extraction plus one matrix multiply (`conv_impl="matmul"`).
Under `vmap` over per-task weights, XLA lowers `lax.conv_general_dilated` to a grouped
convolution that runs ~30× slower than matmuls on CPU, and its backward passes are slow even
ungrouped; a batched `dot_general` instead runs near the machine's matmul peak. The native
lowering stays available (`conv_impl="xla"`) and the two are tested equal.
"""
from typing import Optional

import jax
import jax.numpy as jnp

CONV_IMPLS = ("matmul", "xla")
NORM_MODES = ("batch", "group", "none")


def check_choice(name: str, value, allowed) -> None:
  """Raises ValueError naming `name` unless `value` is one of `allowed`."""
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not supported; allowed values: {tuple(allowed)}.")


def conv2d(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array] = None, *,
           impl: str = "matmul") -> jax.Array:
  """Stride-1 'SAME' convolution with an odd square kernel.

  Args:
    x: `[B, H, W, C]` inputs.
    kernel: `[k, k, C, O]` weights (HWIO).
    bias: optional `[O]`.
    impl: "matmul" (patches @ weights) or "xla" (`lax.conv_general_dilated`).

  Returns:
    `[B, H, W, O]`.
  """
  size = kernel.shape[0]
  if impl == "xla":
    out = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
  else:
    batch, height, width, channels = x.shape
    pad = size // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    patches = jnp.concatenate(
        [padded[:, dy:dy + height, dx:dx + width, :] for dy in range(size) for dx in range(size)],
        axis=-1)  # [B, H, W, k*k*C], ordered (dy, dx, c) like the HWIO kernel
    out = patches.reshape(batch * height * width, size * size * channels) @ kernel.reshape(
        size * size * channels, -1)
    out = out.reshape(batch, height, width, -1)
  if bias is not None:
    out = out + bias
  return out


def max_pool2x2(x: jax.Array) -> jax.Array:
  """2×2 max-pool, stride 2, floor ('VALID'): `[B, H, W, C]` -> `[B, H//2, W//2, C]`.

  The gradient goes to the (first) argmax of each window. `x.max(axis=...)` would route it by
  testing `x == max` instead, and under `jit` XLA may recompute `x` in another fusion with
  different rounding (batch norm's rsqrt), so the test fails and the gradient is silently wrong:
  seen under jit(vmap(grad)) with norm="batch" (tests/models_test.py).
  """
  batch, height, width, channels = x.shape
  h, w = height // 2, width // 2
  x = x[:, :2 * h, :2 * w, :].reshape(batch, h, 2, w, 2, channels)
  windows = jnp.stack([x[:, :, 0, :, 0], x[:, :, 0, :, 1], x[:, :, 1, :, 0], x[:, :, 1, :, 1]],
                      axis=-1)  # [B, h, w, C, 4]
  chosen = jnp.argmax(windows, axis=-1)[..., None] == jnp.arange(4)
  return jnp.sum(jnp.where(chosen, windows, 0), axis=-1)


def normalize(x: jax.Array, scale: Optional[jax.Array], offset: Optional[jax.Array], *,
              mode: str, num_groups: int = 8, eps: float = 1e-5) -> jax.Array:
  """Feature normalisation of `[B, H, W, C]` activations.

  Args:
    x: activations.
    scale, offset: `[C]` affine parameters (ignored for mode "none").
    mode: "batch" — transductive batch statistics of this very batch, no running averages (MAML
      style: no information leaks across tasks); "group" — GroupNorm per example; "none".
    num_groups: groups for "group"; must divide C.
    eps: variance epsilon.
  """
  if mode == "none":
    return x
  if mode == "batch":
    mean = x.mean(axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    x = (x - mean) * jax.lax.rsqrt(var + eps)
  elif mode == "group":
    batch, height, width, channels = x.shape
    grouped = x.reshape(batch, height, width, num_groups, channels // num_groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axis=(1, 2, 4), keepdims=True)
    x = ((grouped - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
  else:
    check_choice("norm", mode, NORM_MODES)
  return x * scale + offset


def uniform_init(key: jax.Array, shape, fan_in: int) -> jax.Array:
  """PyTorch's default init U(±1/√fan_in), so results compare with the PyTorch peers."""
  bound = 1.0 / jnp.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
