"""Shared pytest fixtures, and a persistent XLA compilation cache for the whole suite."""
import os
import pathlib

_REPO = pathlib.Path(__file__).resolve().parents[1]

# Many tests launch `experiments.train` in subprocesses on the same smoke configs (resume,
# multi-host, hardening): with a compilation cache shared by the pytest workers and their
# subprocesses, a program is compiled once per suite run instead of once per launch (a smoke
# BMSSL launch: 96 s -> 20 s, measured by running `python -m experiments.train
# --config=configs/bmssl_omniglot.py:smoke` twice with the same JAX_COMPILATION_CACHE_DIR).
# Set before jax is imported so this process reads it too; subprocesses inherit it. A cached
# executable is the same program: results do not change.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_REPO / ".pytest_cache" / "xla"))


def _jaxlib_knows_xla_flag(name: str) -> bool:
  """Whether the installed jaxlib defines XLA flag `name` (an unknown flag in XLA_FLAGS aborts
  the process, so a flag is only set where this jaxlib still has it)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import mmap  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("jaxlib")
  library = pathlib.Path(spec.origin).parent / "libjax_common.so" if spec and spec.origin else None
  if library is None or not library.is_file():
    return False
  with open(library, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
    return data.find(name.encode()) >= 0


# XLA:CPU's newer fusion emitters compile these small test programs about twice as slowly as
# the classic elemental emitters (a float64 second-order MAML step on `testing.tiny_conv`:
# 16.8 s -> 10.6 s to compile; tests/core_gradients_test.py + core_train_test.py: 384 s -> 302 s,
# run side by side). Both are XLA's own code generators for the same HLO; what is computed does
# not change. Subprocesses inherit the flag.
_FUSION_EMITTERS_FLAG = "xla_cpu_use_fusion_emitters"
if (_FUSION_EMITTERS_FLAG not in os.environ.get("XLA_FLAGS", "")
    and _jaxlib_knows_xla_flag(_FUSION_EMITTERS_FLAG)):
  os.environ["XLA_FLAGS"] = " ".join(
      filter(None, [os.environ.get("XLA_FLAGS"), f"--{_FUSION_EMITTERS_FLAG}=false"]))

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The real offline data: ``$JMETA_DATA_DIR``, else ``<repo>/../shared/data``. Never skips."""
  # Absolute, because tests symlink to it and build file:// URIs from it (CI passes ../shared/data).
  path = pathlib.Path(os.environ.get("JMETA_DATA_DIR", _REPO.parent / "shared" / "data")).resolve()
  if not path.is_dir():
    pytest.fail(f"data directory {path} does not exist: set JMETA_DATA_DIR to a folder with "
                "omniglot/, mnist/ and sklearn_digits/ (layout: jmeta/data/paths.py)")
  return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> pathlib.Path:
  """A session-wide ``$JMETA_CACHE_DIR`` in a temp folder, so tests never touch ~/.cache."""
  path = tmp_path_factory.mktemp("jmeta_cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JMETA_CACHE_DIR", str(path))
    yield path


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "optimized_xla: compile with LLVM optimisation (the suite compiles at level 0)")


@pytest.fixture(autouse=True)
def xla_optimizations(request, monkeypatch):
  """Compile at LLVM optimisation level 0 unless the test is marked `optimized_xla`.

  `jax_disable_most_optimizations` lowers XLA's backend (LLVM) optimisation level; the HLO
  passes (fusion, convolution canonicalisation, algebraic simplification) still run: the
  compiled HLO of a tiny second-order MAML step is the same text either way. Compiling
  dominates most tests (tiny programs run once), and LLVM's optimisation is most of a compile:
  a cold smoke BMSSL launch took 73 s with it and 28 s without. It changes how fast a program
  runs, not what it computes, so tests of jmeta's values, gradients and plumbing do not need
  it. Tests that run full-size steps, slow at level 0 (the peer-workload tests of
  layers_speed_paths_test, regression_test), are marked `optimized_xla`. Subprocesses a test
  launches inherit the setting through the environment.
  """
  optimized = request.node.get_closest_marker("optimized_xla") is not None
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0" if optimized else "1")
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", not optimized)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
