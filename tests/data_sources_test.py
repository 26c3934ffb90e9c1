"""MNIST and digits on the real files; data/cache directory resolution; resizing."""
import os
import pathlib

import numpy as np
import pytest

from jmeta.data import digits
from jmeta.data import mnist
from jmeta.data import paths
from jmeta.data.dataset import Dataset

MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


@pytest.fixture(scope="module")
def mnist28(data_dir):
  return mnist.load(data_dir=data_dir)


@pytest.fixture(scope="module")
def digits28(data_dir):
  return digits.load(data_dir=data_dir)


def _check_digits_dataset(ds: Dataset, counts, size):
  assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
  assert ds.images.shape == (sum(counts), size, size, 1)
  assert ds.class_names == tuple("0123456789")
  np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), counts)
  assert ds.images.mean() < 128 and ds.images.max() == 255
  # Background 0: corners are blank in the sources; LANCZOS ringing may leave a rare 1.
  corners = ds.images[:, 0, 0, 0]
  assert np.mean(corners == 0) > 0.999 and corners.max() <= 2


def test_mnist(mnist28):
  _check_digits_dataset(mnist28, MNIST_COUNTS, 28)


def test_mnist_resized(data_dir, mnist28):
  small = mnist.load(data_dir=data_dir, image_size=14)
  _check_digits_dataset(small, MNIST_COUNTS, 14)
  np.testing.assert_array_equal(small.images[:5], np.stack(
      [Dataset.resize_image(x, 14) for x in mnist28.images[:5]]))
  np.testing.assert_array_equal(small.labels, mnist28.labels)


def test_digits(data_dir, digits28):
  _check_digits_dataset(digits28, DIGITS_COUNTS, 28)
  raw = digits.load(data_dir=data_dir, image_size=None)
  _check_digits_dataset(raw, DIGITS_COUNTS, 8)
  levels = np.rint(np.arange(17) * 255 / 16).astype(np.uint8)
  assert set(np.unique(raw.images)) <= set(levels)
  np.testing.assert_array_equal(raw.labels, digits28.labels)


def test_resolve_data_dir(tmp_path, monkeypatch):
  monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert paths.resolve_data_dir() == tmp_path / "xdg" / "jmeta"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert paths.resolve_data_dir() == tmp_path / "home" / ".cache" / "jmeta"
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "env"))
  assert paths.resolve_data_dir() == tmp_path / "env"
  assert paths.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_resolve_cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setenv(paths.CACHE_DIR_ENV, str(tmp_path / "env_cache"))
  assert paths.resolve_cache_dir(tmp_path) == tmp_path / "env_cache"
  assert paths.resolve_cache_dir(tmp_path, cache_dir=tmp_path / "c") == tmp_path / "c"
  monkeypatch.delenv(paths.CACHE_DIR_ENV)
  writable = tmp_path / "writable"
  writable.mkdir()
  assert paths.resolve_cache_dir(writable) == writable / "cache"
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  read_only.chmod(0o555)
  try:
    assert not paths.is_writable_dir(read_only)  # Even for root.
    assert paths.resolve_cache_dir(read_only) == tmp_path / "xdg" / "jmeta" / "cache"
    assert list(read_only.iterdir()) == []
  finally:
    read_only.chmod(0o755)


def test_shared_data_dir_is_read_only(data_dir, monkeypatch, tmp_path):
  """The shared data is never written to: the cache falls back to the user cache root."""
  if paths.is_writable_dir(data_dir):
    pytest.fail(f"{data_dir} should be read-only (mode {oct(os.stat(data_dir).st_mode)})")
  monkeypatch.delenv(paths.CACHE_DIR_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert paths.resolve_cache_dir(data_dir) == tmp_path / "jmeta" / "cache"


def test_checksums_round_trip(tmp_path):
  path = tmp_path / "a.bin"
  path.write_bytes(b"hello")
  digest = paths.verify_checksum(path)  # No SHA256SUMS yet: nothing to compare against.
  assert paths.record_checksum(path) == digest
  (tmp_path / "b.bin").write_bytes(b"x")
  paths.record_checksum(tmp_path / "b.bin")
  assert paths.read_checksums(tmp_path) == {"a.bin": digest,
                                            "b.bin": paths.sha256_file(tmp_path / "b.bin")}
  assert paths.verify_checksum(path) == digest
  path.write_bytes(b"hellO")
  with pytest.raises(paths.DataError, match=r"a\.bin: SHA-256 .* does not match"):
    paths.verify_checksum(path)


def test_real_files_match_their_checksums(data_dir):
  for folder in ("mnist", "sklearn_digits", "omniglot", "omniglot/splits"):
    sums = paths.read_checksums(data_dir / folder)
    assert sums, f"{data_dir / folder} has no SHA256SUMS"
    for name in sums:
      if name.endswith((".gz", ".json")):
        paths.verify_checksum(data_dir / folder / name)


def test_resize_image():
  image = np.zeros((105, 105), np.float32)
  image[40:60, 45:60] = 255
  small = Dataset.resize_image(image, 28)
  assert small.shape == (28, 28, 1) and small.dtype == np.uint8
  assert small[:8].max() == 0 and small.max() == 255
  np.testing.assert_array_equal(Dataset.resize_image(image.T, 28)[..., 0], small[..., 0].T)
  np.testing.assert_array_equal(Dataset.resize_image(np.full((8, 8, 3), 255, np.uint8), 28),
                                np.full((28, 28, 3), 255, np.uint8))
  for bad in (0, -3, 2.5, True, "28"):
    with pytest.raises(ValueError, match="image_size must be a positive int"):
      Dataset.resize_image(image, bad)


def test_resized_dataset(digits28):
  ds = digits28.resized(14)
  assert ds.images.shape == (1797, 14, 14, 1) and ds.labels is digits28.labels
  assert digits28.resized(28) is digits28


def test_paths_default_is_a_path():
  assert isinstance(paths.user_cache_root(), pathlib.Path)
