"""Shared pytest fixtures."""
import os
import pathlib

import jax
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="module")
def fast_compilation():
  """Tiny programs: skip XLA optimisations, which dominate the run time (flax train_test).

  Opt in per module with `pytestmark = pytest.mark.usefixtures("fast_compilation")`.
  """
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
