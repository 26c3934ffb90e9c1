"""TFDS sources, offline, on ``tfds.testing.mock_data`` (random records, no TensorFlow)."""
import numpy as np
import pytest
import tensorflow_datasets

from jmeta.data import paths
from jmeta.data import tfds

NUM = 23


@pytest.fixture
def mock_mnist():
  with tensorflow_datasets.testing.mock_data(
      num_examples=NUM, policy=tensorflow_datasets.testing.MockPolicy.USE_CODE):
    yield


def _keys(images):
  return sorted(x.tobytes() for x in images)


def test_load(mock_mnist):
  ds = tfds.load("mnist", "test")
  assert ds.images.shape == (NUM, 28, 28, 1) and ds.images.dtype == np.uint8
  assert ds.labels.shape == (NUM,) and ds.labels.dtype == np.int32
  assert ds.class_names == tuple("0123456789")
  assert 0 <= ds.labels.min() and ds.labels.max() < 10
  again = tfds.load("mnist", "test")
  np.testing.assert_array_equal(again.images, ds.images)  # Record order is stable.


def test_load_resized_and_rgb(mock_mnist):
  assert tfds.load("mnist", "test", image_size=14).images.shape == (NUM, 14, 14, 1)
  rgb = tfds.load("cifar10", "test")
  assert rgb.images.shape == (NUM, 32, 32, 3) and rgb.num_classes == 10


def test_load_missing_feature(mock_mnist):
  with pytest.raises(paths.DataError, match=r"TFDS mnist/test: record 0 has no feature 'img'"):
    tfds.load("mnist", "test", image_key="img")


def test_stream_covers_each_record_once_per_epoch(mock_mnist):
  ds = tfds.load("mnist", "test")
  batches = list(tfds.stream("mnist", "test", batch_size=5, seed=0))
  assert [len(b["labels"]) for b in batches] == [5, 5, 5, 5, 3]
  images = np.concatenate([b["images"] for b in batches])
  labels = np.concatenate([b["labels"] for b in batches])
  assert images.dtype == np.uint8 and labels.dtype == np.int32
  assert _keys(images) == _keys(ds.images)
  order = [next(i for i in range(NUM) if np.array_equal(ds.images[i], x)) for x in images]
  np.testing.assert_array_equal(labels, ds.labels[order])
  assert order != sorted(order), "records should be shuffled"


def test_stream_is_deterministic_per_seed(mock_mnist):
  def first(seed):
    return np.concatenate([b["images"] for b in tfds.stream("mnist", "test", batch_size=8,
                                                             seed=seed)])
  np.testing.assert_array_equal(first(1), first(1))
  assert not np.array_equal(first(1), first(2))


def test_stream_epochs_and_options(mock_mnist):
  two = list(tfds.stream("mnist", "test", batch_size=4, seed=0, num_epochs=2,
                         drop_remainder=True, image_size=14))
  assert len(two) == 2 * NUM // 4 and all(b["images"].shape == (4, 14, 14, 1) for b in two)
  forever = tfds.stream("mnist", "test", batch_size=10, seed=0, num_epochs=None)
  assert [next(forever)["images"].shape[0] for _ in range(7)] == [10] * 7
  ordered = np.concatenate([b["images"] for b in tfds.stream("mnist", "test", batch_size=10,
                                                             seed=0, shuffle=False)])
  np.testing.assert_array_equal(ordered, tfds.load("mnist", "test").images)
  with pytest.raises(ValueError, match="batch_size"):
    tfds.stream("mnist", "test", batch_size=0, seed=0)


def test_unprepared_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(paths.MissingDataError,
                     match=rf"TFDS dataset 'mnist' is not prepared in {tmp_path}"):
    tfds.load("mnist", "test", data_dir=tmp_path, download=False)
