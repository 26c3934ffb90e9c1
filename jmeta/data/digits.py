"""UCI optical digits as bundled in scikit-learn (1,797 images of 8x8, values 0-16).

File: ``<data_dir>/sklearn_digits/digits.csv.gz`` (see `jmeta.data.paths`), 1,797 rows of 65
comma-separated integers without header: 64 pixels (row-major, 0 = blank, 16 = full ink)
then the label 0-9. Pixels are scaled to 0..255 (``v * 255 / 16``, ink high) as floats and
resized from 8x8 without intermediate rounding (antialiased bilinear when enlarging, see
`Dataset.resize_image`).
"""
import gzip
import zlib
from typing import Optional

import numpy as np

from jmeta.data import paths
from jmeta.data.dataset import Dataset
from jmeta.data.paths import DataError

FILE = "digits.csv.gz"
NUM_CLASSES = 10
MAX_VALUE = 16
_COLUMNS = 65


def load(*, data_dir: Optional[paths.PathLike] = None, image_size: Optional[int] = 28) -> Dataset:
  """Loads the 1,797 scikit-learn digits as ``[1797, S, S, 1]`` uint8 images, labels 0-9.

  Args:
    data_dir: Data directory (default: ``$JMETA_DATA_DIR``, else ``~/.cache/jmeta``).
    image_size: Output side length; ``None`` (or 8) keeps 8x8, only rescaling values.

  Returns:
    `Dataset` with ``class_names = ("0", ..., "9")``, images in file order.

  Raises:
    paths.MissingDataError: if the file is missing.
    paths.DataError: if a row is malformed or a value is out of range.
  """
  path = paths.resolve_data_dir(data_dir) / "sklearn_digits" / FILE
  paths.require_files([path], what="scikit-learn digits",
                      hint="It is sklearn/datasets/data/digits.csv.gz of scikit-learn.")
  paths.verify_checksum(path)
  try:
    with gzip.open(path, "rt") as f:
      lines = f.read().splitlines()
  except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError) as e:
    raise DataError(f"{path}: corrupted or truncated gzip file ({e})") from e
  rows = []
  for lineno, line in enumerate(lines, start=1):
    fields = line.split(",")
    try:
      row = [int(float(v)) if float(v).is_integer() else None for v in fields]
    except ValueError:
      row = [None]
    if len(fields) != _COLUMNS or None in row:
      raise DataError(f"{path}:{lineno}: expected {_COLUMNS} comma-separated integers "
                      f"(64 pixels then the label), got {line[:80]!r}")
    rows.append(row)
  if not rows:
    raise DataError(f"{path}: no rows")
  table = np.asarray(rows, dtype=np.int64)
  pixels, labels = table[:, :64], table[:, 64]
  for name, values, high in (("pixel", pixels, MAX_VALUE), ("label", labels, NUM_CLASSES - 1)):
    bad = np.argwhere((values < 0) | (values > high))
    if bad.size:
      raise DataError(f"{path}:{bad[0][0] + 1}: {name} value {values[tuple(bad[0])]} "
                      f"out of range 0..{high}")
  scaled = pixels.reshape(-1, 8, 8).astype(np.float32) * (255.0 / MAX_VALUE)
  size = 8 if image_size is None else image_size
  images = np.stack([Dataset.resize_image(x, size) for x in scaled])
  return Dataset(images=images, labels=labels.astype(np.int32),
                 class_names=tuple(str(i) for i in range(NUM_CLASSES)))
