"""XLA:CPU flags that make jmeta's steps faster, applied by the launchers before JAX starts.

`--xla_cpu_use_fusion_emitters=false` makes XLA:CPU compile its loop fusions (the elementwise,
reduction and layout work between the convolutions) with its older LLVM loop emitter instead of
the newer MLIR fusion emitters. Measured with jaxlib 0.10.2 on 2026-12-01 (docs/PERFORMANCE.md,
"The loop-fusion emitter"): the peer workload's second-order MAML step −15%, first-order −12%,
BMG −19%, the default BMSSL step −17%, compile times −30 to −45%; the same values to float32
rounding (the test suite passes under it).

`--xla_cpu_prefer_vector_width=512` lets the code XLA generates itself (the same loop fusions)
use 512-bit vectors (XLA's default is 256; LLVM emits them only for CPUs with AVX-512). Measured
with jaxlib 0.10.2 on 2026-12-01 (session 16) on this project's AVX-512 AMD EPYC, alternated
twice with 256: the peer workload's second-order MAML step −6%, first-order −5%, BMG −4%, the
default BMSSL step level; float32 rounding changes, the test suite passes under it. On an
AVX2-only CPU (2026-12-06, session 17) the same flag made the second-order step slower in 4 of 5
alternated pairs, so it is added only where the CPU lists `avx512f` (read from /proc/cpuinfo;
where that file does not exist, as on macOS, it is not added).

XLA aborts on a flag it does not know, and other jaxlib versions were not measured, so the flags
are added only for the jaxlib line they were measured on; elsewhere set them yourself
(`XLA_FLAGS=...`) after checking them.
"""
import os
from typing import AbstractSet, Mapping, MutableMapping, Optional, Tuple

FAST_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_prefer_vector_width=512")
MEASURED_JAXLIB = "0.10."
# A flag listed here is added only if the CPU has this feature (a /proc/cpuinfo "flags" name).
REQUIRED_CPU_FEATURE = {"--xla_cpu_prefer_vector_width=512": "avx512f"}


def cpu_features(cpuinfo_path: str = "/proc/cpuinfo") -> frozenset:
  """The feature names on the first "flags" line of `cpuinfo_path`; empty if it is unreadable."""
  try:
    with open(cpuinfo_path, encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        name, _, value = line.partition(":")
        if name.strip() == "flags":
          return frozenset(value.split())
  except OSError:
    pass
  return frozenset()


def _flag_name(flag: str) -> str:
  return flag.split("=", 1)[0]


def fast_flags(environ: Mapping[str, str], jaxlib_version: str,
               features: Optional[AbstractSet[str]] = None) -> Tuple[str, ...]:
  """The FAST_FLAGS to add to `environ`'s XLA_FLAGS: none that the user already set (to any
  value), none whose REQUIRED_CPU_FEATURE is missing from `features` (default: this machine's
  `cpu_features()`), none on a jaxlib line other than the measured one."""
  if not jaxlib_version.startswith(MEASURED_JAXLIB):
    return ()
  if features is None:
    features = cpu_features()
  present = {_flag_name(flag) for flag in environ.get("XLA_FLAGS", "").split()}

  def cpu_has_what_it_needs(flag):
    return flag not in REQUIRED_CPU_FEATURE or REQUIRED_CPU_FEATURE[flag] in features

  return tuple(flag for flag in FAST_FLAGS
               if _flag_name(flag) not in present and cpu_has_what_it_needs(flag))


def add_fast_flags(environ: MutableMapping[str, str] = os.environ) -> Tuple[str, ...]:
  """Appends `fast_flags` to XLA_FLAGS in `environ`; returns what it added.

  Takes effect only if JAX's backend has not started yet (XLA reads XLA_FLAGS once), so call it
  first thing in a launcher.
  """
  import jaxlib  # pylint: disable=import-outside-toplevel
  added = fast_flags(environ, jaxlib.__version__)
  if added:
    environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", "")] + list(added)).strip()
  return added
