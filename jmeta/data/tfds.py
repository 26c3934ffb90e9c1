"""TensorFlow Datasets sources, read through random access (no TensorFlow needed).

Both functions go through ``tensorflow_datasets.data_source``, which reads a dataset prepared
in the ``array_record`` file format record by record with plain numpy. `load` materialises a
split as a `Dataset`; `stream` is a grain pipeline for splits too large for memory.

``data_dir`` here is a TFDS data directory (``None``: TFDS's default, ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``), not jmeta's data directory. Offline tests can use
``tensorflow_datasets.testing.mock_data``, which fakes ``data_source`` with random records.
"""
from typing import Any, Dict, Iterator, Optional

import numpy as np

from jmeta.data import paths
from jmeta.data.dataset import Dataset
from jmeta.data.paths import DataError


def load(name: str, split: str, *, data_dir: Optional[paths.PathLike] = None,
         image_key: str = "image", label_key: str = "label", image_size: Optional[int] = None,
         download: bool = True) -> Dataset:
  """Loads a whole TFDS image-classification split into memory as a `Dataset`.

  Args:
    name: TFDS name, e.g. ``"mnist"`` or ``"omniglot:3.0.0"``.
    split: TFDS split, e.g. ``"test"`` or ``"train[:10%]"``.
    data_dir: TFDS data directory (``None``: TFDS's default).
    image_key: Feature holding a uint8 ``[H, W, C]`` (or ``[H, W]``) image.
    label_key: Feature holding an integer label.
    image_size: Resize every image to this side length (`Dataset.resize_image`); ``None``
      keeps the stored size, which must then be the same for all records.
    download: Let TFDS download and prepare the dataset if it is not prepared.

  Returns:
    `Dataset` in record order; channels as stored (grayscale or RGB). If the label feature is
    a ``ClassLabel``, labels are kept and ``class_names`` are its names; otherwise labels are
    renumbered 0..C-1 in sorted order of the distinct values and ``class_names`` are those
    values as strings.

  Raises:
    paths.MissingDataError: if the dataset is not prepared (and ``download`` is False).
    paths.DataError: if the split is empty or a record lacks a key or has a bad image/label.
  """
  source = _data_source(name, split, data_dir=data_dir, download=download)
  where = f"TFDS {name}/{split}"
  if len(source) == 0:  # pylint: disable=g-explicit-length-test
    raise DataError(f"{where}: the split is empty")
  images, raw_labels = None, np.empty(len(source), np.int64)
  for i in range(len(source)):
    image, raw_labels[i] = _convert(source[i], index=i, where=where, image_key=image_key,
                                    label_key=label_key, image_size=image_size)
    if images is None:
      images = np.empty((len(source), *image.shape), np.uint8)
    elif image.shape != images.shape[1:]:
      raise DataError(f"{where}: record {i} image has shape {image.shape}, record 0 has "
                      f"{images.shape[1:]}; pass image_size to resize")
    images[i] = image
  names = _class_names(source, label_key)
  if names is not None:
    if raw_labels.min() < 0 or raw_labels.max() >= len(names):
      raise DataError(f"{where}: {label_key!r} values outside 0..{len(names) - 1}")
    return Dataset(images=images, labels=raw_labels.astype(np.int32), class_names=names)
  values, labels = np.unique(raw_labels, return_inverse=True)
  return Dataset(images=images, labels=labels.astype(np.int32),
                 class_names=tuple(str(v) for v in values))


def stream(name: str, split: str, *, batch_size: int, seed: int,
           data_dir: Optional[paths.PathLike] = None, image_key: str = "image",
           label_key: str = "label", image_size: Optional[int] = None,
           num_epochs: Optional[int] = 1, shuffle: bool = True, drop_remainder: bool = False,
           num_threads: int = 4, download: bool = True) -> Iterator[Dict[str, np.ndarray]]:
  """Streams a TFDS split in batches with grain, reading records on demand.

  The pipeline is ``grain.MapDataset.source(data_source)`` -> per-record conversion -> global
  shuffle (``seed``, reseeded each epoch) -> repeat -> batch, iterated with ``num_threads`` reader
  threads. Only a prefetch buffer of records is in memory at any time.

  Args:
    name: TFDS name, e.g. ``"mnist"``.
    split: TFDS split, e.g. ``"train"``.
    batch_size: Records per batch.
    seed: Shuffle seed; the same seed gives the same batch sequence.
    data_dir: TFDS data directory (``None``: TFDS's default).
    image_key: Feature holding a uint8 ``[H, W, C]`` (or ``[H, W]``) image.
    label_key: Feature holding an integer label (passed through unchanged, as int32).
    image_size: Resize every image to this side length; ``None`` keeps the stored size (batches
      of differently sized images then fail with a clear error).
    num_epochs: Passes over the split; ``None`` repeats forever. Batches span epoch boundaries.
    shuffle: Shuffle records (per epoch); if False, records come in split order.
    drop_remainder: Drop a final batch smaller than ``batch_size`` (only when ``num_epochs`` is
      finite); by default it is yielded.
    num_threads: Reader threads of the grain iterator.
    download: Let TFDS download and prepare the dataset if it is not prepared.

  Returns:
    A grain iterator (checkpointable via ``get_state``/``set_state``) of dicts
    ``{"images": uint8 [B, H, W, C], "labels": int32 [B]}``.
  """
  import grain  # pylint: disable=g-import-not-at-top

  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
    raise ValueError(f"num_epochs must be a positive int or None, got {num_epochs!r}")
  source = _data_source(name, split, data_dir=data_dir, download=download)
  where = f"TFDS {name}/{split}"
  if len(source) == 0:  # pylint: disable=g-explicit-length-test
    raise DataError(f"{where}: the split is empty")

  def convert(index: int, record: Dict[str, Any]) -> Dict[str, np.ndarray]:
    image, label = _convert(record, index=index, where=where, image_key=image_key,
                            label_key=label_key, image_size=image_size)
    return {"images": image, "labels": np.int32(label)}

  def stack(records):
    shapes = {r["images"].shape for r in records}
    if len(shapes) > 1:
      raise DataError(f"{where}: a batch mixes image shapes {sorted(shapes)}; pass image_size")
    return {k: np.stack([r[k] for r in records]) for k in ("images", "labels")}

  # Conversion before shuffling, so `index` is the record's index in the split (shuffle and
  # repeat of a MapDataset only permute indices; records are still read lazily).
  dataset = grain.MapDataset.source(source).map_with_index(convert)
  if shuffle:
    dataset = dataset.shuffle(seed=seed)
  if num_epochs != 1:
    dataset = dataset.repeat(num_epochs)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, batch_fn=stack)
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * batch_size)
  return iter(dataset.to_iter_dataset(options))


def _data_source(name: str, split: str, *, data_dir, download: bool):
  """``tfds.data_source`` with a clear error if the dataset is not prepared."""
  import tensorflow_datasets  # pylint: disable=g-import-not-at-top

  data_dir = None if data_dir is None else str(data_dir)
  try:
    return tensorflow_datasets.data_source(name, split=split, data_dir=data_dir,
                                           download=download)
  except ModuleNotFoundError as e:
    # Preparing (download_and_prepare) needs packages that reading does not.
    raise paths.MissingDataError(
        f"TFDS dataset {name!r} is not prepared and TFDS cannot prepare it here: {e}. Install "
        f"the missing package, or prepare it elsewhere with file_format='array_record' and "
        f"pass that data_dir") from e
  except NotImplementedError as e:
    # TFDS reports a missing dataset as "TFRECORD is not supported"; say what really happened.
    builder = tensorflow_datasets.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      raise paths.MissingDataError(
          f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; prepare it with "
          f"file_format='array_record' (or pass download=True)") from e
    raise DataError(f"TFDS dataset {name!r} in {builder.data_dir} is not in the array_record "
                    f"format needed for random access ({e})") from e


def _class_names(source, label_key: str) -> Optional[tuple]:
  try:
    feature = source.dataset_info.features[label_key]
  except (AttributeError, KeyError, TypeError):
    return None
  names = getattr(feature, "names", None)
  return tuple(str(n) for n in names) if names else None


def _convert(record: Dict[str, Any], *, index: int, where: str, image_key: str, label_key: str,
             image_size: Optional[int]):
  """One record -> (uint8 [H, W, C] image, int label), with errors naming the record."""
  for key in (image_key, label_key):
    if key not in record:
      raise DataError(f"{where}: record {index} has no feature {key!r} "
                      f"(features: {sorted(record)})")
  image = np.asarray(record[image_key])
  if image.dtype != np.uint8 or image.ndim not in (2, 3):
    raise DataError(f"{where}: record {index} feature {image_key!r} is {image.dtype} "
                    f"{list(image.shape)}, expected a uint8 [H, W, C] image")
  if image.ndim == 2:
    image = image[:, :, None]
  if image_size is not None:
    image = Dataset.resize_image(image, image_size)
  label = np.asarray(record[label_key])
  if label.shape != () or label.dtype.kind not in "iub":
    raise DataError(f"{where}: record {index} feature {label_key!r} is {label.dtype} "
                    f"{list(label.shape)}, expected an integer scalar")
  return image, int(label)
