"""jmeta data sources: every loader returns a `Dataset` (uint8 [N, H, W, C] images, ink high).

* `omniglot.load(split, ...)`: Omniglot from the official zips (background / evaluation /
  Vinyals splits, optional rotation classes), decoded once and cached as ``.npz``.
* `mnist.load(...)`: MNIST test split from the IDX files.
* `digits.load(...)`: scikit-learn's 8x8 digits, resized.
* `tfds.load(name, split, ...)` / `tfds.stream(...)`: TensorFlow Datasets via random access.

Where files live and how they are verified: `jmeta.data.paths`.
"""
from jmeta.data import digits
from jmeta.data import mnist
from jmeta.data import omniglot
from jmeta.data import paths
from jmeta.data import tfds
from jmeta.data.dataset import Dataset
from jmeta.data.paths import DataError
from jmeta.data.paths import MissingDataError

__all__ = ["Dataset", "DataError", "MissingDataError", "digits", "mnist", "omniglot", "paths",
           "tfds"]
