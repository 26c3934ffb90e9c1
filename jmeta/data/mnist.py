"""MNIST test split (10,000 digits) from the official gzip-compressed IDX files.

Files, under ``<data_dir>/mnist/`` (see `jmeta.data.paths`): ``t10k-images-idx3-ubyte.gz`` and
``t10k-labels-idx1-ubyte.gz``. MNIST already has ink high (255) on a 0 background.
"""
import gzip
import pathlib
import zlib
from typing import Optional, Tuple

import numpy as np

from jmeta.data import paths
from jmeta.data.dataset import Dataset
from jmeta.data.paths import DataError

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension.
NUM_CLASSES = 10
_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def load(*, data_dir: Optional[paths.PathLike] = None, image_size: Optional[int] = 28) -> Dataset:
  """Loads the MNIST test split as ``[10000, S, S, 1]`` uint8 images with labels 0-9.

  Args:
    data_dir: Data directory (default: ``$JMETA_DATA_DIR``, else ``~/.cache/jmeta``).
    image_size: Output side length (resized as in `Dataset.resize_image`); 28 or ``None``
      keeps the original pixels.

  Returns:
    `Dataset` with ``class_names = ("0", ..., "9")``, images in file order.

  Raises:
    paths.MissingDataError: if a file is missing (it is not downloaded automatically).
    paths.DataError: if a file is not a valid IDX file of the expected kind, or the two files
      disagree in length.
  """
  folder = paths.resolve_data_dir(data_dir) / "mnist"
  images_path, labels_path = folder / IMAGES_FILE, folder / LABELS_FILE
  paths.require_files([images_path, labels_path], what="MNIST",
                      hint=f"The official files are at {_URL} (and yann.lecun.com/exdb/mnist).")
  images = read_idx(images_path, magic=IMAGES_MAGIC)
  labels = read_idx(labels_path, magic=LABELS_MAGIC)
  if images.shape[0] != labels.shape[0]:
    raise DataError(f"{images_path} has {images.shape[0]} images but {labels_path} has "
                    f"{labels.shape[0]} labels")
  if labels.size and labels.max() >= NUM_CLASSES:
    raise DataError(f"{labels_path}: label {labels.max()} out of range 0..{NUM_CLASSES - 1}")
  dataset = Dataset(images=images[..., None], labels=labels.astype(np.int32),
                    class_names=tuple(str(i) for i in range(NUM_CLASSES)))
  return dataset if image_size is None else dataset.resized(image_size)


def read_idx(path: paths.PathLike, *, magic: int) -> np.ndarray:
  """Reads a (possibly gzip-compressed) uint8 IDX file, checking header, magic and length.

  Args:
    path: The ``.gz`` or raw IDX file; checked against ``SHA256SUMS`` if its folder has one.
    magic: Expected magic number (``0x0800 + number of dimensions`` for uint8 data).

  Returns:
    The uint8 array with the shape given by the header.

  Raises:
    paths.DataError: naming the file and what is wrong.
  """
  path = pathlib.Path(path)
  paths.verify_checksum(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header")
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise DataError(f"{path}: IDX magic number {found}, expected {magic}")
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
  shape: Tuple[int, ...] = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                                 for i in range(ndim))
  body = int(np.prod(shape))
  if len(data) != header + body:
    problem = "truncated" if len(data) < header + body else "has trailing bytes"
    raise DataError(f"{path}: IDX body {problem}: header says shape {shape} = {body} bytes, "
                    f"file has {len(data) - header}")
  return np.frombuffer(data, np.uint8, count=body, offset=header).reshape(shape)


def _read_bytes(path: pathlib.Path) -> bytes:
  if path.suffix != ".gz":
    return path.read_bytes()
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise DataError(f"{path}: corrupted or truncated gzip file ({e})") from e
