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
      "markers", "optimized_xla: compile with XLA's optimisation passes (the suite skips them)")


@pytest.fixture(autouse=True)
def xla_optimizations(request, monkeypatch):
  """Compile without XLA's optimisation passes unless the test is marked `optimized_xla`.

  Compiling dominates most tests (tiny programs run once), and the passes are most of a
  compile: a cold smoke BMSSL launch takes 73 s with them and 28 s without. They rewrite how a
  program runs, not what it computes, so tests of jmeta's values, gradients and plumbing do not
  need them. The modules that check the compiled fast paths, fusion or training speed
  (layers_speed_paths_test, models_test, regression_test) are marked `optimized_xla`.
  Subprocesses a test launches inherit the same setting through the environment.
  """
  optimized = request.node.get_closest_marker("optimized_xla") is not None
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0" if optimized else "1")
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", not optimized)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
