"""Winograd F(4×4, 3×3) convolutions on XLA:CPU as two fused kernels (`winograd_cpu.cc`).

`winograd.py` writes F(4×4, 3×3) as XLA operations: each transform stores its whole
`[36, tiles, channels]` result and the next operation reads it back, and the 36 per-position
matmuls are separate library calls. The kernels here take a block of 18 tiles (48 for the
weight gradient) through input transform, the 36 matmuls and output transform while it is in
the core's cache, the kernel transforms included, split over XLA's intra-op threads. They are
XLA FFI custom calls, so `layers.py` can use them as its CPU lowering of float32 3×3
convolutions: derivatives of every order are again those convolutions, so nothing here needs
differentiating. docs/PERFORMANCE.md ("Fused Winograd kernels") has the measurements.

The C++ source is compiled on first use with the system's C++ compiler (`$CXX`, else `c++`)
for this machine's CPU (`-march=native`) into a cache directory (`$JMETA_KERNEL_CACHE`, else
`$XDG_CACHE_HOME/jmeta` or `~/.cache/jmeta`), keyed by the source, the flags, the compiler,
jaxlib and the CPU, so machines sharing a home directory do not share binaries. If the
compiler is missing or fails, a warning says so once and `layers.py` keeps `winograd.py`'s
XLA form (same values, slower). `JMETA_CPU_KERNELS=0` turns the kernels off.
"""
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.data import paths
from jmeta.models import winograd

DISABLE_ENV = "JMETA_CPU_KERNELS"
CACHE_ENV = "JMETA_KERNEL_CACHE"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "winograd_cpu.cc")
CHANNEL_MULTIPLE = 16  # the kernels' vectors: 16 float32 channels

# Threads per call, at most (0: all of XLA's intra-op pool). docs/PERFORMANCE.md measures 1
# against all with two devices on two cores.
MAX_THREADS = 0

_CONV_TARGET = "jmeta_winograd_conv"
_WEIGHT_GRAD_TARGET = "jmeta_winograd_weight_grad"
_COMPILE_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")

_log = logging.getLogger(__name__)


def _cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or str(paths.user_cache_root())


def _cpu_description() -> str:
  """What -march=native compiles for: the model and feature flags of the first CPU."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f.read().split("\n\n")[0].splitlines()
               if line.split(":")[0].strip() in ("vendor_id", "cpu family", "model", "flags")]
    return "\n".join(lines)
  except OSError:
    return platform.processor() or platform.machine()


def _compiler() -> Optional[str]:
  return shutil.which(os.environ.get("CXX") or "c++")


def _build(compiler: str) -> str:
  """The shared library's path, compiled unless the cache has it (raises on failure)."""
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                           check=False).stdout
  with open(SOURCE, "rb") as f:
    source = f.read()
  key = hashlib.sha256(b"\0".join(
      [source, " ".join(_COMPILE_FLAGS).encode(), version.encode(), jax.__version__.encode(),
       _cpu_description().encode()])).hexdigest()[:16]
  cache = _cache_dir()
  library = os.path.join(cache, f"libjmeta_winograd_cpu-{key}.so")
  if os.path.exists(library):
    return library
  os.makedirs(cache, exist_ok=True)
  # Compiled under a temporary name and renamed: concurrent processes (pytest -n) never load a
  # half-written library.
  fd, partial = tempfile.mkstemp(dir=cache, suffix=".so.partial")
  os.close(fd)
  try:
    result = subprocess.run(
        [compiler, *_COMPILE_FLAGS, "-I", jax.ffi.include_dir(), SOURCE, "-o", partial],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"{compiler} exited with {result.returncode}: "
                         f"{result.stderr.strip()[-2000:]}")
    os.replace(partial, library)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return library


@functools.lru_cache(maxsize=None)
def _registered() -> bool:
  """Builds (or finds) and loads the library and registers its two FFI targets, once per
  process; False, with one warning, if that fails."""
  compiler = _compiler()
  if compiler is None:
    _log.warning("jmeta: no C++ compiler (%s) found; 3×3 float32 convolutions on CPU use "
                 "winograd.py's slower XLA form.", os.environ.get("CXX") or "c++")
    return False
  try:
    library = ctypes.cdll.LoadLibrary(_build(compiler))
  except (OSError, RuntimeError) as error:
    _log.warning("jmeta: building %s failed (%s); 3×3 float32 convolutions on CPU use "
                 "winograd.py's slower XLA form.", SOURCE, error)
    return False
  jax.ffi.register_ffi_target(_CONV_TARGET, jax.ffi.pycapsule(library.JmetaWinogradConv),
                              platform="cpu")
  jax.ffi.register_ffi_target(_WEIGHT_GRAD_TARGET,
                              jax.ffi.pycapsule(library.JmetaWinogradWeightGrad), platform="cpu")
  return True


def enabled() -> bool:
  """Whether the kernels are on (not turned off by `JMETA_CPU_KERNELS=0`) and built."""
  return os.environ.get(DISABLE_ENV, "1") != "0" and _registered()


def applies(x: jax.Array, out_channels: int) -> bool:
  """Whether the CPU lowering of a 3×3 'SAME' convolution of `x` [..., H, W, C] (or its weight
  gradient) to `out_channels` uses these kernels: float32, channel counts multiples of 16, an
  image size where `winograd.best_output_tile` picks F(4×4, 3×3), and the kernels enabled."""
  return (x.dtype == jnp.float32 and x.shape[-1] % CHANNEL_MULTIPLE == 0
          and out_channels % CHANNEL_MULTIPLE == 0
          and winograd.best_output_tile(*x.shape[-3:-1]) == 4 and enabled())


def _as_groups(value):
  return value if value.ndim == 5 else value[None]


def _check(x, other, name, expected_shape):
  if other.shape != expected_shape:
    raise ValueError(f"winograd_cpu: {name} must be {expected_shape} for x {x.shape}, "
                     f"got {other.shape}")
  if x.dtype != jnp.float32 or other.dtype != jnp.float32:
    raise ValueError(f"winograd_cpu needs float32 operands, got {x.dtype} and {other.dtype}")
  for channels in (x.shape[-1], other.shape[-1]):
    if channels % CHANNEL_MULTIPLE:
      raise ValueError(f"winograd_cpu needs channel counts divisible by {CHANNEL_MULTIPLE}, "
                       f"got x {x.shape} and {name} {other.shape}")
  if not enabled():
    raise RuntimeError(f"winograd_cpu's kernels are not available ({DISABLE_ENV}=0, or the "
                       "build failed: see the warning logged)")


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`winograd.conv3x3(x, kernel, output_tile=4)` as one fused kernel: x [N, H, W, C] with
  kernel [3, 3, C, O], or per group x [G, N, H, W, C] with kernel [G, 3, 3, C, O]. CPU only."""
  _check(x, kernel, "kernel", x.shape[:-4] + (3, 3, x.shape[-1], kernel.shape[-1]))
  out = jax.ffi.ffi_call(
      _CONV_TARGET, jax.ShapeDtypeStruct(_as_groups(x).shape[:-1] + kernel.shape[-1:], x.dtype))(
          _as_groups(x), _as_groups(kernel), max_threads=np.int64(MAX_THREADS))
  return out.reshape(x.shape[:-1] + kernel.shape[-1:])


def conv3x3_weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
  """`winograd.conv3x3_weight_grad(x, g, output_tile=4)` as one fused kernel: [3, 3, C, O] for
  x [N, H, W, C], g [N, H, W, O]; per group [G, 3, 3, C, O]. CPU only."""
  _check(x, g, "g", x.shape[:-1] + g.shape[-1:])
  groups = _as_groups(x).shape[0]
  out = jax.ffi.ffi_call(
      _WEIGHT_GRAD_TARGET,
      jax.ShapeDtypeStruct((groups, 3, 3, x.shape[-1], g.shape[-1]), x.dtype))(
          _as_groups(x), _as_groups(g), max_threads=np.int64(MAX_THREADS))
  return out.reshape(x.shape[:-4] + (3, 3, x.shape[-1], g.shape[-1]))
