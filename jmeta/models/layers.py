"""Pure layer functions shared by jmeta's models.

Three interchangeable convolutions (`conv2d(..., impl=...)`, all tested equal in values and in
first-, second- and third-order and forward-mode derivatives, under `vmap`):

* "native": `lax.conv_general_dilated` in XLA:CPU's canonical NHWC/HWIO form, wrapped in two
  small JAX primitives (the convolution and its weight gradient) whose derivatives are again
  those two primitives. Plain autodiff of `lax.conv_general_dilated` yields kernel-gradient and
  input-gradient convolutions with transposed/reversed dimension numbers, and XLA:CPU only
  rewrites those into a fast form outside loops (`ConvCanonicalization` visits the entry
  computation only), so inside `lax.scan`/`lax.map` (the inner loop) they ran on a naive
  fallback, up to 1 s per call. Here every convolution of the forward pass and of every
  derivative order is canonical and lands in the fast library kernel (~90 GFLOP/s per core).
  On CPU, 3×3 convolutions with enough channels and pixels lower to Winograd's F(4×4, 3×3) or
  F(2×2, 3×3) instead (`winograd.py`: 36 or 16 matmuls over channels in place of 144 or 36
  multiplies per output block).
  Under `vmap` with per-task kernels, the batching rules bind grouped forms of the two
  primitives (XLA's own grouped convolution has no fast kernel on CPU): on CPU, Winograd's tiles
  of all the tasks go through one batched matmul per tile position; elsewhere, and for the
  direct convolutions, one canonical convolution runs per task.
* "matmul": patch extraction plus one (batched) matrix multiply. Under `vmap` this becomes a
  batched `dot_general`, which XLA:CPU spreads over all cores.
* "xla": plain `lax.conv_general_dilated` and plain autodiff (the reference).

See docs/PERFORMANCE.md for which is fastest where.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir

from jmeta.models import winograd
from jmeta.models import winograd_cpu

CONV_IMPLS = ("matmul", "xla", "native")
NORM_MODES = ("batch", "group", "none")

_NHWC = ("NHWC", "HWIO", "NHWC")


def check_choice(name: str, value, allowed) -> None:
  """Raises ValueError naming `name` unless `value` is one of `allowed`."""
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not supported; allowed values: {tuple(allowed)}.")


# ------------------------------------------------------------------------------------------------
# "native": two primitives, closed under differentiation.
#
#   conv(x, k)[b, i, j, o]     = Σ_{dy, dx, c} xpad[b, i + dy, j + dx, c] k[dy, dx, c, o]
#   weight_grad(x, g)[dy,dx,c,o] = Σ_{b, i, j}   xpad[b, i + dy, j + dx, c] g[b, i, j, o]
#
# Both are bilinear. conv's transpose in x is conv(ct, flip_t(k)), in k it is weight_grad(x, ct);
# weight_grad's transpose in x is conv(g, flip_t(ct)), in g it is conv(x, ct). So the derivatives
# of any order (and their forward-mode versions) only ever call these two canonical forms.
#
# Both also come in a grouped form, one leading axis more on every operand (x [G, B, H, W, C],
# k [G, kh, kw, C, O], g [G, B, H, W, O]): group i's images with group i's kernel. It is what
# `vmap` with per-task kernels binds (the batching rules below), so a chunk of vmapped tasks
# reaches the lowering as one operation, which Winograd runs as one batched matmul per tile
# position; other lowerings loop over the groups.


def _grouped(x) -> bool:
  return x.ndim == 5


def _flip_t(kernel: jax.Array) -> jax.Array:
  """The kernel of the input gradient: spatially flipped, input/output channels swapped."""
  return jnp.flip(kernel, (-4, -3)).swapaxes(-2, -1)


def _per_group(impl, *operands, **params):
  """`impl` of a grouped operation as a loop over the groups (the lowerings without a grouped
  form)."""
  return jnp.stack([impl(*(operand[i] for operand in operands), **params)
                    for i in range(operands[0].shape[0])])


def _padding(size):
  return tuple((s // 2, s // 2) for s in size)


def _conv_impl(x, kernel, *, size):
  if _grouped(x):
    return _per_group(_conv_impl, x, kernel, size=size)
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), _padding(size), dimension_numbers=_NHWC)


def _weight_grad_impl(x, g, *, size):
  if _grouped(x):
    return _per_group(_weight_grad_impl, x, g, size=size)
  # A canonical convolution too: batch = input channels, features = examples, kernel = g.
  out = jax.lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1),
                                     _padding(size), dimension_numbers=_NHWC)  # [C, kh, kw, O]
  return out.transpose(1, 2, 0, 3)


# XLA:CPU's weight-gradient convolution (an H×W kernel over all images; Eigen's, now YNNPACK's)
# takes time that grows faster than linearly in the number of images: at Conv4's query shapes, a
# sum of convolutions over 5 images at a time takes half to two thirds of the time of one over
# all of them (benchmarks/conv_weight_grad.py, docs/PERFORMANCE.md). Other backends, and eager
# evaluation outside `jit`, get one convolution.
CPU_WEIGHT_GRAD_IMAGES_PER_CHUNK = 5


def _weight_grad_chunked(x, g, *, size, images_per_chunk):
  n = images_per_chunk
  out = _weight_grad_impl(x[:n], g[:n], size=size)
  for start in range(n, x.shape[0], n):
    out = out + _weight_grad_impl(x[start:start + n], g[start:start + n], size=size)
  return out


def _weight_grad_one_channel(x, g, *, size):
  """The weight gradient of a one-channel input (a grayscale first layer) as one matmul:
  `[kh·kw, images·H·W]` shifted copies of the input times `g` as `[images·H·W, O]` (grouped:
  one batched matmul). The convolution form needs `g` transposed to `[H, W, images, O]`; this
  reads it as it is."""
  groups = x.shape[:-4]
  shifted = jnp.stack([window[..., 0] for window in _shifted_windows(x, size)], axis=len(groups))
  out = jnp.matmul(shifted.reshape(groups + (size[0] * size[1], -1)),
                   g.reshape(groups + (-1, g.shape[-1])))
  return out.reshape(groups + (size[0], size[1], 1, g.shape[-1]))


def _shifted_windows(x, size):
  """The zero-padded 'SAME' input seen by each kernel tap (dy, dx), in HWIO's row order:
  kh·kw arrays shaped like `x` [..., B, H, W, C]."""
  height, width = x.shape[-3:-1]
  (top, bottom), (left, right) = _padding(size)
  padded = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + ((top, bottom), (left, right), (0, 0)))
  return [padded[..., dy:dy + height, dx:dx + width, :]
          for dy in range(size[0]) for dx in range(size[1])]


# Winograd (F(2×2, 3×3) or F(4×4, 3×3), `winograd.best_output_tile`) on CPU where it was measured
# faster than YNNPACK's direct convolutions: 3×3 kernels, ≥ 64 channels in and out, images ≥ 6×6
# (with F(2×2, 3×3), 32 channels were level forward and slower for the weight gradient, and 5×5
# images level; with F(4×4, 3×3) 32 channels won in one run of benchmarks/winograd_conv.py but
# were not measured in a step; docs/PERFORMANCE.md).
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_SIZE = 6


def _winograd_applies(x, out_channels, size):
  return (tuple(size) == (3, 3) and min(x.shape[-1], out_channels) >= WINOGRAD_MIN_CHANNELS
          and min(x.shape[-3:-1]) >= WINOGRAD_MIN_SIZE)


def _conv_one_channel(x, kernel, *, size):
  """The convolution of a one-channel input (a grayscale first layer) as kh·kw broadcast
  multiply-adds of the shifted image, one per kernel tap (grouped or not). XLA fuses these into
  whatever reads the output (Conv4: the max-pool that follows), so the [B, H, W, O] output,
  O times the input's size, need not be written: on one core, 75 28×28 images to 64 channels
  and their 2×2 max-pool took 0.65 ms this way against 1.80 ms as a library convolution
  (`benchmarks/first_block_conv.py`; docs/PERFORMANCE.md, "The first block's convolution as
  multiply-adds")."""
  groups = x.shape[:-4]
  taps = kernel.reshape(groups + (1, 1, 1, -1, kernel.shape[-1]))  # [..., 1, 1, 1, kh·kw, O]
  out = None
  for tap, window in enumerate(_shifted_windows(x, size)):
    term = window * taps[..., tap, :]
    out = term if out is None else out + term
  return out


# Whether the CPU lowering uses `_conv_one_channel` for one-channel inputs. Since session 23 it did
# (the step 1-5% faster then); with the fused Winograd kernels of session 24 the library
# convolution made the step 8-9% faster (`so`, `fo`, `bmg1`: docs/PERFORMANCE.md, "The first
# block's convolution as multiply-adds"): XLA recomputed the multiply-adds inside the max-pool's
# derivative, which then took 5 ms per query set.
ONE_CHANNEL_MULTIPLY_ADDS = False


def _conv_cpu_impl(x, kernel, *, size):
  if x.shape[-1] == 1 and ONE_CHANNEL_MULTIPLY_ADDS:
    return _conv_one_channel(x, kernel, size=size)  # grouped or not
  if _winograd_applies(x, kernel.shape[-1], size):
    if winograd_cpu.applies(x, kernel.shape[-1]):
      return winograd_cpu.conv3x3(x, kernel)  # grouped or not
    return winograd.conv3x3(x, kernel)  # grouped or not
  if _grouped(x):
    return _per_group(_conv_cpu_impl, x, kernel, size=size)
  return _conv_impl(x, kernel, size=size)


def _weight_grad_cpu_impl(x, g, *, size):
  if x.shape[-1] == 1:
    return _weight_grad_one_channel(x, g, size=size)  # grouped or not
  if _winograd_applies(x, g.shape[-1], size):
    if winograd_cpu.applies(x, g.shape[-1]):
      return winograd_cpu.conv3x3_weight_grad(x, g)  # grouped or not
    return winograd.conv3x3_weight_grad(x, g)  # grouped or not
  if _grouped(x):
    return _per_group(_weight_grad_cpu_impl, x, g, size=size)
  return _weight_grad_chunked(x, g, size=size, images_per_chunk=CPU_WEIGHT_GRAD_IMAGES_PER_CHUNK)


_conv_p = Primitive("jmeta_conv2d_same")
_weight_grad_p = Primitive("jmeta_conv2d_same_weight_grad")


def _varying_axes(value) -> frozenset:
  """The `shard_map` mesh axes along which `value` varies (empty outside `shard_map`)."""
  manual = getattr(jax.typeof(value), "manual_axis_type", None)
  return frozenset(getattr(manual, "varying", ()) or ())


def _match_varying(*values):
  """Marks every operand varying along the union of their `shard_map` axes, as JAX does for its
  own primitives, so that the cotangent of a replicated operand is summed over devices."""
  axes = [_varying_axes(v) for v in values]
  union = frozenset().union(*axes)
  return [v if a == union else jax.lax.pcast(v, tuple(union - a), to="varying")
          for v, a in zip(values, axes)]


def _native_conv(x, kernel):
  x, kernel = _match_varying(x, kernel)
  return _conv_p.bind(x, kernel, size=tuple(kernel.shape[-4:-2]))


def _native_weight_grad(x, g, size):
  x, g = _match_varying(x, g)
  return _weight_grad_p.bind(x, g, size=tuple(size))


def _conv_abstract_eval(x, kernel, *, size):
  del size
  # `update` keeps x's sharding and `shard_map` (varying-axes) annotations: the output is batched
  # like x.
  return x.update(shape=x.shape[:-1] + kernel.shape[-1:], weak_type=False)


def _weight_grad_abstract_eval(x, g, *, size):
  shape = x.shape[:-4] + tuple(size) + (x.shape[-1], g.shape[-1])
  try:  # not batched: drop any sharding of x's batch axis, keep the varying axes
    return x.update(shape=shape, weak_type=False,
                    sharding=x.sharding.update(spec=jax.sharding.PartitionSpec()))
  except (AttributeError, TypeError, ValueError):
    return x.update(shape=shape, weak_type=False)


def _to_front(value, dim, size):
  if dim is None:
    return jnp.broadcast_to(value, (size,) + value.shape)
  return jnp.moveaxis(value, dim, 0)


def _bind_grouped(bind, *operands):
  """`bind` on operands with a new leading group axis: the grouped form, or, if the operands are
  grouped already (nested `vmap`), the two group axes merged into one and split again after."""
  if _grouped(operands[0]):
    return bind(*operands)
  n, groups = operands[0].shape[:2]
  out = bind(*(operand.reshape((n * groups,) + operand.shape[2:]) for operand in operands))
  return out.reshape((n, groups) + out.shape[1:])


def _conv_batch(args, dims, *, size):
  (x, kernel), (x_dim, kernel_dim) = args, dims
  if kernel_dim is None:  # a shared kernel: fold the mapped axis into the (last) batch axis
    batch_axis = x.ndim - 5  # 0, or 1 after a group axis
    x = jnp.moveaxis(x, x_dim, batch_axis)
    merged = x.shape[:batch_axis] + (-1,) + x.shape[batch_axis + 2:]
    out = _native_conv(x.reshape(merged), kernel)
    return out.reshape(x.shape[:-1] + out.shape[-1:]), batch_axis
  n = kernel.shape[kernel_dim]
  x, kernel = _to_front(x, x_dim, n), _to_front(kernel, kernel_dim, n)
  # Per-item kernels: the grouped convolution of this module (XLA's own grouped convolution has
  # no fast kernel on CPU).
  return _bind_grouped(_native_conv, x, kernel), 0


def _weight_grad_batch(args, dims, *, size):
  (x, g), (x_dim, g_dim) = args, dims
  n = x.shape[x_dim] if x_dim is not None else g.shape[g_dim]
  x, g = _to_front(x, x_dim, n), _to_front(g, g_dim, n)
  return _bind_grouped(lambda x, g: _native_weight_grad(x, g, size), x, g), 0


for _prim, _impl, _abstract, _batch in (
    (_conv_p, _conv_impl, _conv_abstract_eval, _conv_batch),
    (_weight_grad_p, _weight_grad_impl, _weight_grad_abstract_eval, _weight_grad_batch)):
  _prim.def_impl(_impl)
  _prim.def_abstract_eval(_abstract)
  mlir.register_lowering(_prim, mlir.lower_fun(_impl, multiple_results=False))
  batching.primitive_batchers[_prim] = _batch
for _prim, _cpu_impl in ((_conv_p, _conv_cpu_impl), (_weight_grad_p, _weight_grad_cpu_impl)):
  mlir.register_lowering(_prim, mlir.lower_fun(_cpu_impl, multiple_results=False),
                         platform="cpu")

ad.defbilinear(_conv_p,
               lambda ct, x, kernel, size: _native_conv(ct, _flip_t(kernel)),
               lambda ct, x, kernel, size: _native_weight_grad(x, ct, size))
ad.defbilinear(_weight_grad_p,
               lambda ct, x, g, size: _native_conv(g, _flip_t(ct)),
               lambda ct, x, g, size: _native_conv(x, ct))


def _patches(x: jax.Array, size) -> jax.Array:
  """Every output pixel's zero-padded 'SAME' input window: `[B, H, W, C]` -> `[B·H·W, kh·kw·C]`,
  each row ordered (dy, dx, c) like the rows of an HWIO kernel reshaped to `[kh·kw·C, O]`."""
  batch, height, width, channels = x.shape
  windows = jnp.concatenate(_shifted_windows(x, size), axis=-1)
  return windows.reshape(batch * height * width, size[0] * size[1] * channels)


def conv2d(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array] = None, *,
           impl: str = "native") -> jax.Array:
  """Stride-1 'SAME' convolution with an odd kernel.

  Args:
    x: `[B, H, W, C]` inputs.
    kernel: `[kh, kw, C, O]` weights (HWIO), kh and kw odd.
    bias: optional `[O]`.
    impl: "native" (canonical XLA convolutions with closed-form derivatives), "matmul"
      (patches @ weights) or "xla" (`lax.conv_general_dilated` with plain autodiff).

  Returns:
    `[B, H, W, O]`.
  """
  check_choice("impl", impl, CONV_IMPLS)
  if impl != "xla" and (kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0):
    raise ValueError(f"conv2d(impl={impl!r}) needs an odd kernel, got {kernel.shape[:2]}.")
  if impl == "native":
    out = _native_conv(x, kernel)
  elif impl == "xla":
    out = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC)
  else:
    out = _patches(x, kernel.shape[:2]) @ kernel.reshape(-1, kernel.shape[3])
    out = out.reshape(x.shape[:3] + (kernel.shape[3],))
  if bias is not None:
    out = out + bias
  return out


def _pool_windows(x: jax.Array) -> jax.Array:
  """`[B, H, W, C]` -> `[B, H//2, 2, W//2, 2, C]` (odd trailing rows/columns dropped)."""
  batch, height, width, channels = x.shape
  h, w = height // 2, width // 2
  if (height, width) != (2 * h, 2 * w):
    x = x[:, :2 * h, :2 * w, :]
  return x.reshape(batch, h, 2, w, 2, channels)


def _first_max(windows: jax.Array):
  """Each window's maximum and a one-hot `[B, h, 2, w, 2, C]` mask of its first argmax
  (row-major, as `jnp.argmax`; NaN counts as the maximum, as in XLA's max)."""
  def keeps_first(a, b):
    return (a >= b) | jnp.isnan(a)

  top_left, top_right = windows[:, :, 0, :, 0], windows[:, :, 0, :, 1]
  bottom_left, bottom_right = windows[:, :, 1, :, 0], windows[:, :, 1, :, 1]
  top_keeps_left = keeps_first(top_left, top_right)
  bottom_keeps_left = keeps_first(bottom_left, bottom_right)
  top = jnp.where(top_keeps_left, top_left, top_right)
  bottom = jnp.where(bottom_keeps_left, bottom_left, bottom_right)
  keeps_top = keeps_first(top, bottom)
  keeps_left = jnp.where(keeps_top, top_keeps_left, bottom_keeps_left)
  row = jnp.where(keeps_top, 0, 1)[:, :, None, :, None, :]
  column = jnp.where(keeps_left, 0, 1)[:, :, None, :, None, :]
  index = jnp.arange(2)
  mask = (row == index[:, None, None, None]) & (column == index[:, None])
  return jnp.where(keeps_top, top, bottom), mask


def max_pool2x2(x: jax.Array) -> jax.Array:
  """2×2 max-pool, stride 2, floor ('VALID'): `[B, H, W, C]` -> `[B, H//2, W//2, C]`.

  The gradient goes to the first argmax of each window (row-major order, as `jnp.argmax`).
  The derivative is written out (`custom_jvp`): the tangent is the windows' tangents summed under
  a one-hot mask of the winners, so its transpose is a broadcast of the pooled cotangent under
  the same mask — one elementwise pass at every derivative order. Plain autodiff of a chain of
  `where`s over the four strided window slices instead transposes each slice into a `pad`, and
  XLA:CPU ran those four pads and their sum at a fraction of memory speed (the largest
  non-convolution cost of the second-order MAML step; docs/PERFORMANCE.md).
  `x.max(axis=...)` would route the gradient by testing `x == max`, and under `jit` XLA may
  recompute `x` in another fusion with different rounding (batch norm's rsqrt), so the test
  fails and the gradient is silently lost (seen under jit(vmap(grad)) with norm="batch",
  tests/models_test.py); the mask here is one-hot by construction.
  """
  return _max_pool2x2(x)


@jax.custom_jvp
def _max_pool2x2(x: jax.Array) -> jax.Array:
  return _first_max(_pool_windows(x))[0]


@_max_pool2x2.defjvp
def _max_pool2x2_jvp(primals, tangents):
  (x,), (tangent,) = primals, tangents
  mask = _first_max(_pool_windows(x))[1]
  # The primal through `_max_pool2x2` itself, so that differentiating this rule (second-order
  # derivatives) uses the rule again instead of autodiff of the `where` chain.
  return _max_pool2x2(x), jnp.sum(jnp.where(mask, _pool_windows(tangent), 0), axis=(2, 4))


def _batch_statistics(x: jax.Array, eps: float):
  """`x − s`, its per-channel mean and 1/√(var + eps) over `[B, H, W]`, in one pass over `x`
  (see `normalize`)."""
  shift = jax.lax.stop_gradient(x[0].mean(axis=(0, 1)))
  centred = x - shift
  mean = centred.mean(axis=(0, 1, 2))
  var = jnp.maximum(jnp.square(centred).mean(axis=(0, 1, 2)) - jnp.square(mean), 0.0)
  return centred, mean, jax.lax.rsqrt(var + eps)


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

  "batch" reads the activations once for both statistics: mean and variance come from the sums
  of (x − s) and (x − s)² with s = stop_gradient(mean of the first example), close enough to the
  batch mean to keep the cancellation in E[(x−s)²] − E[x−s]² at the level of the two-pass
  formula (checked against float64 on the peer workload). The function is the same for every s
  (the variance is shift-invariant), so all derivatives are exact.
  """
  if mode == "none":
    return x
  if mode == "batch":
    centred, mean, inv_std = _batch_statistics(x, eps)
    return (centred - mean) * (inv_std * scale) + offset
  if mode == "group":
    batch, height, width, channels = x.shape
    grouped = x.reshape(batch, height, width, num_groups, channels // num_groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axis=(1, 2, 4), keepdims=True)
    x = ((grouped - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    return x * scale + offset
  check_choice("norm", mode, NORM_MODES)


def batch_norm_relu_max_pool(x: jax.Array, scale: jax.Array, offset: jax.Array, *,
                             eps: float = 1e-5) -> jax.Array:
  """`max_pool2x2(relu(normalize(x, scale, offset, mode="batch")))`, pooling first.

  Batch norm is, per channel, the affine map `y ↦ a·(y − mean) + offset` with
  `a = scale / √(var + eps)`, and ReLU is monotone, so the window maxima can be taken before
  both: of `y` where `a ≥ 0`, of `−y` (the minima) where `a < 0`. Multiplying by a channel's
  sign is exact, each window's winner is the same element (up to ties that float rounding
  creates after the affine map), and the value at the winner is computed with the same float32
  operations as `normalize`; the normalisation, ReLU and their derivatives then run on a
  quarter of the activations. The statistics and their derivatives still see every activation.
  The derivatives are those of the unfused layers wherever those exist (tested in float64 to
  third order); at `scale == 0` exactly, where the function is not differentiable in `scale`,
  the two pick different one-sided derivatives. It saves about 11% of a second-order MAML
  step on the peer workload, 12% of a BMG step (docs/PERFORMANCE.md, "Batch norm, ReLU and
  pooling in one").
  """
  centred, mean, inv_std = _batch_statistics(x, eps)
  return _pool_normalize_relu(centred, mean, inv_std, scale, offset)


def _pool_normalize_relu(x, mean, inv_std, scale, offset):
  """`batch_norm_relu_max_pool` given the statistics of `x` (see there)."""
  factor = inv_std * scale
  sign = jax.lax.stop_gradient(jnp.where(factor < 0, -1.0, 1.0).astype(x.dtype))
  winners = max_pool2x2(x * sign) * sign
  return jax.nn.relu((winners - mean) * factor + offset)


# `conv_batch_norm_relu_max_pool` takes the statistics from the input's patches where a patch has
# at most this many entries: a 3×3 convolution of one-channel images (Conv4's first block on
# Omniglot), the only case measured (docs/PERFORMANCE.md, "Batch statistics from the input
# patches"). The patches' covariance costs K² multiplies per pixel against the O channels'
# passes it saves, so for larger K (RGB: 27) it is a guess, left to a measurement.
PATCH_STATISTICS_MAX_ENTRIES = 9


def conv_batch_norm_relu_max_pool(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array],
                                  scale: jax.Array, offset: jax.Array, *, impl: str = "native",
                                  eps: float = 1e-5) -> jax.Array:
  """`batch_norm_relu_max_pool(conv2d(x, kernel, bias, impl=impl), scale, offset)`, with the batch
  statistics taken from `x`'s patches when a patch is small (`PATCH_STATISTICS_MAX_ENTRIES`) and
  there is no bias.

  Each output channel is linear in the input patch p ([K] entries, K = kh·kw·C_in):
  y = p·w. Its batch mean is m·w and its variance wᵀ S w, with m and S the patches'
  mean and covariance over all B·H·W pixels, which come from the input alone (S from B
  products [K, H·W] × [H·W, K]). So neither the statistics nor their derivatives read the
  [B, H, W, O] output, 64 times the input's size in Conv4's first block (64 channels from
  one): only the pooling does. The covariance is taken around the patches' mean, so the
  variance needs no shift against cancellation (`normalize` does). The same function as the
  layers in order, with derivatives tested equal in float64 to third order; in float32 it was
  closer to float64 than the output's statistics on the peer workload (docs/PERFORMANCE.md).
  """
  y = conv2d(x, kernel, bias, impl=impl)
  height, width, channels, out_channels = kernel.shape
  # With a bias the second-order MAML meta-gradient of the peer workload came out 15× further
  # from float64 in float32 (unexplained; the layer alone was as accurate), and batch norm
  # cancels the bias anyway (Conv4 has none under batch norm): those keep the output's.
  if bias is not None or height * width * channels > PATCH_STATISTICS_MAX_ENTRIES:
    return batch_norm_relu_max_pool(y, scale, offset, eps=eps)
  patches = _patches(x, (height, width))
  patch_mean = jnp.mean(patches, axis=0)
  # Summed per image, then over images: one [K, B·H·W] × [B·H·W, K] product accumulates all
  # pixels in one float32 sum (relative error 4e-5 on binary strokes against 2e-6 this way).
  centred = (patches - patch_mean).reshape(x.shape[0], -1, patches.shape[1])
  covariance = jnp.einsum("bpk,bpl->bkl", centred, centred).sum(axis=0) / patches.shape[0]
  weights = kernel.reshape(-1, out_channels)
  mean = patch_mean @ weights
  var = jnp.maximum(jnp.sum(weights * (covariance @ weights), axis=0), 0.0)
  return _pool_normalize_relu(y, mean, jax.lax.rsqrt(var + eps), scale, offset)


def uniform_init(key: jax.Array, shape, fan_in: int) -> jax.Array:
  """PyTorch's default init U(±1/√fan_in), so results compare with the PyTorch peers."""
  bound = 1.0 / jnp.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
