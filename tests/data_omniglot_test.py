"""Omniglot loader on the real archives of the data directory.

The two archives are decoded once per module (module fixture `cold`, into this module's own
``$JMETA_CACHE_DIR``, so what other test modules cached before does not warm it); every other load
here is a cache hit.
"""
import io
import json
import pathlib
import re
import time
import urllib.error
import zipfile

import numpy as np
import pytest
from PIL import Image

from jmeta.data import omniglot
from jmeta.data import paths
from jmeta.data.dataset import Dataset

pytestmark = pytest.mark.usefixtures("module_cache_dir")

COUNTS = {"background": (964, 19280), "evaluation": (659, 13180)}
VINYALS = {"vinyals_train": 1028, "vinyals_val": 172, "vinyals_test": 423}
NAME = re.compile(r"^images_(background|evaluation)/[^/]+/character\d\d$")


@pytest.fixture(scope="module")
def module_cache_dir(cache_dir, tmp_path_factory):
  """A fresh ``$JMETA_CACHE_DIR`` for this module (the session's is restored after it)."""
  del cache_dir  # the session's, set first so that this one overrides it
  path = tmp_path_factory.mktemp("omniglot_cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(paths.CACHE_DIR_ENV, str(path))
    yield path


@pytest.fixture(scope="module")
def cold(data_dir, module_cache_dir):
  """Cold decodes (cache empty before) of both archives at 28x28."""
  out = {}
  for split, archive in omniglot.ARCHIVES.items():
    assert not list(module_cache_dir.glob(f"omniglot-{archive}-*")), "cache should start cold"
    out[split] = omniglot.load(split, data_dir=data_dir)
    assert len(list(module_cache_dir.glob(f"omniglot-{archive}-28px-*.npz"))) == 1
  return out


def _no_decode(*args, **kwargs):
  raise AssertionError("expected a cache hit, but the archive was decoded")


def _check_layout(ds: Dataset, num_classes: int, per_class: int = 20):
  assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
  assert ds.images.shape == (num_classes * per_class, 28, 28, 1)
  assert ds.num_classes == num_classes == len(set(ds.class_names))
  np.testing.assert_array_equal(np.bincount(ds.labels, minlength=num_classes),
                                np.full(num_classes, per_class))
  assert np.all(np.diff(ds.labels) >= 0), "images should be grouped by label"


@pytest.mark.parametrize("split", ["background", "evaluation"])
def test_archive_counts_and_pixels(cold, split):
  ds = cold[split]
  num_classes, num_images = COUNTS[split]
  assert len(ds.images) == num_images
  _check_layout(ds, num_classes)
  assert list(ds.class_names) == sorted(ds.class_names)
  assert all(NAME.match(n) and n.startswith(f"images_{split}/") for n in ds.class_names)
  assert ds.class_names[0] == {"background": "images_background/Alphabet_of_the_Magi/character01",
                               "evaluation": "images_evaluation/Angelic/character01"}[split]
  # Ink high: mostly background 0, full ink 255.
  assert ds.images.mean() < 128 and np.median(ds.images) == 0 and ds.images.max() == 255
  assert np.mean(ds.images[:, 0, 0, 0] == 0) > 0.999


@pytest.mark.parametrize("split", ["background", "evaluation"])
def test_cache_round_trip_equals_cold_decode(cold, data_dir, monkeypatch, split):
  monkeypatch.setattr(omniglot, "decode_archive", _no_decode)
  start = time.perf_counter()
  cached = omniglot.load(split, data_dir=data_dir)
  assert time.perf_counter() - start < 1.0
  np.testing.assert_array_equal(cached.images, cold[split].images)
  np.testing.assert_array_equal(cached.labels, cold[split].labels)
  assert cached.class_names == cold[split].class_names


def test_decode_matches_pngs(cold, data_dir, tmp_path):
  """A small archive of real members decodes to the same pixels; None keeps 105x105 exactly."""
  source = data_dir / "omniglot" / "images_evaluation.zip"
  small = tmp_path / "images_evaluation.zip"
  with zipfile.ZipFile(source) as src, zipfile.ZipFile(small, "w") as dst:
    members = sorted(n for n in src.namelist()
                     if re.match(r"images_evaluation/Angelic/character0[12]/.*\.png$", n))
    for name in members:
      dst.writestr(name, src.read(name))
    pngs = [np.asarray(Image.open(io.BytesIO(src.read(n)))) for n in members]
  assert len(members) == 40
  ds = omniglot.decode_archive(small, image_size=28)
  np.testing.assert_array_equal(ds.images, cold["evaluation"].images[:40])
  full = omniglot.decode_archive(small, image_size=None)
  assert full.images.shape == (40, 105, 105, 1)
  np.testing.assert_array_equal(full.images[..., 0], np.where(np.stack(pngs), 0, 255))


def test_vinyals_splits_partition_all_characters(cold, data_dir):
  names = {}
  for split, count in VINYALS.items():
    ds = omniglot.load(split, data_dir=data_dir)
    _check_layout(ds, count)
    assert list(ds.class_names) == sorted(ds.class_names)
    names[split] = set(ds.class_names)
  all_names = set(cold["background"].class_names) | set(cold["evaluation"].class_names)
  assert set.union(*names.values()) == all_names
  assert sum(len(n) for n in names.values()) == 1623
  zips = {s: {n.split("/")[0] for n in names[s]} for s in names}
  assert zips == {"vinyals_train": {"images_background", "images_evaluation"},
                  "vinyals_val": {"images_background"}, "vinyals_test": {"images_evaluation"}}


def test_vinyals_images_come_from_the_archives(cold, data_dir):
  ds = omniglot.load("vinyals_train", data_dir=data_dir)
  for label in (0, 500, ds.num_classes - 1):
    name = ds.class_names[label]
    source = cold[name.split("/")[0][len("images_"):]]
    np.testing.assert_array_equal(ds.images[ds.labels == label],
                                  source.images[source.labels == source.class_names.index(name)])


@pytest.mark.parametrize("split", ["vinyals_val", "evaluation"])
def test_rotations_are_exact_rot90_classes(cold, data_dir, split):
  base = omniglot.load(split, data_dir=data_dir)
  rot = omniglot.load(split, data_dir=data_dir, rotations=True)
  n, c = len(base.images), base.num_classes
  _check_layout(rot, 4 * c)
  for k, angle in enumerate(omniglot.ROTATIONS):
    block = slice(k * n, (k + 1) * n)
    np.testing.assert_array_equal(rot.images[block], np.rot90(base.images, k, axes=(1, 2)))
    np.testing.assert_array_equal(rot.labels[block], base.labels + k * c)
    assert rot.class_names[k * c:(k + 1) * c] == tuple(f"{x}/rot{angle:03d}"
                                                       for x in base.class_names)


def test_rotate_then_resize_equals_resize_then_rotate(cold, data_dir):
  rot = omniglot.rotate_classes(cold["evaluation"])
  n = len(cold["evaluation"].images)
  with zipfile.ZipFile(data_dir / "omniglot" / "images_evaluation.zip") as z:
    members = sorted(m for m in z.namelist() if m.endswith(".png"))
    for i in (0, 1, 7777):
      ink = 255.0 - np.asarray(Image.open(io.BytesIO(z.read(members[i]))).convert("L"),
                               np.float32)
      for k in range(4):
        np.testing.assert_array_equal(Dataset.resize_image(np.rot90(ink, k), 28),
                                      rot.images[k * n + i])


def test_vinyals_train_with_rotations(cold, data_dir):
  ds = omniglot.load("vinyals_train", data_dir=data_dir, rotations=True)
  _check_layout(ds, 4 * 1028)
  assert ds.class_names[1028] == ds.class_names[0].replace("/rot000", "/rot090")


def test_class_order_is_deterministic(cold, data_dir):
  again = omniglot.load("vinyals_val", data_dir=data_dir)
  spec = json.loads((data_dir / "omniglot/splits/vinyals_val.json").read_text())
  expected = sorted(f"images_{z}/{a}/{c}" for z in spec for a in spec[z] for c in spec[z][a])
  assert list(again.class_names) == expected
  assert omniglot.load("vinyals_val", data_dir=data_dir).class_names == again.class_names


def test_bad_arguments(data_dir):
  with pytest.raises(ValueError, match=r"split must be one of .*vinyals_train.*'train'"):
    omniglot.load("train", data_dir=data_dir)
  with pytest.raises(ValueError, match="image_size"):
    omniglot.load("background", data_dir=data_dir, image_size=0)


def test_invalid_cache_is_reported_and_rebuilt(cold, data_dir, tmp_path, monkeypatch):
  digest = paths.sha256_file(data_dir / "omniglot" / "images_evaluation.zip")
  stale = tmp_path / f"omniglot-images_evaluation-28px-v1-{digest[:16]}.npz"
  stale.write_bytes(b"not an npz")
  decodes = []

  def decode(path, *, image_size, members):  # Stands in for the (already tested) decode.
    decodes.append((pathlib.Path(path).name, image_size, len(members)))
    return cold["evaluation"]

  monkeypatch.setattr(omniglot, "decode_archive", decode)
  with pytest.warns(UserWarning, match=r"invalid Omniglot cache.*\.npz: unreadable"):
    ds = omniglot.load("evaluation", data_dir=data_dir, cache_dir=tmp_path)
  assert decodes == [("images_evaluation.zip", 28, 13180)]
  monkeypatch.setattr(omniglot, "decode_archive", _no_decode)
  reloaded = omniglot.load("evaluation", data_dir=data_dir, cache_dir=tmp_path)
  np.testing.assert_array_equal(reloaded.images, ds.images)
  assert reloaded.class_names == cold["evaluation"].class_names


def test_cache_validation_checks_shapes(tmp_path):
  path = tmp_path / "bad.npz"
  np.savez(path, images=np.zeros((10, 28, 28, 1), np.uint8), labels=np.zeros(10, np.int32),
           class_names=np.asarray(["images_evaluation/A/character01"]),
           source_sha256=np.asarray("0" * 64), version=np.asarray(1))
  with pytest.raises(paths.DataError, match=r"bad\.npz.*images uint8\[10, 28, 28, 1\], expected "
                     r"uint8\[13180, 28, 28, 1\]"):
    omniglot._read_cache(path, archive="images_evaluation", digest="0" * 64, image_size=28)


def test_download_from_url_verifies_and_records(cold, data_dir, tmp_path, monkeypatch):
  """Downloads (served from file:// URLs) are verified, moved into place and checksummed."""
  source = data_dir / "omniglot"
  monkeypatch.setitem(omniglot.URLS, "images_evaluation",
                      (source / "images_evaluation.zip").as_uri())
  monkeypatch.setitem(omniglot.SPLIT_URLS, "vinyals_test",
                      (source / "splits" / "vinyals_test.json").as_uri())
  ds = omniglot.load("vinyals_test", data_dir=tmp_path)
  assert ds.class_names == omniglot.load("vinyals_test", data_dir=data_dir).class_names
  root = tmp_path / "omniglot"
  assert sorted(p.name for p in root.iterdir()) == ["SHA256SUMS", "images_evaluation.zip",
                                                     "splits"]
  assert paths.read_checksums(root) == {
      "images_evaluation.zip": paths.sha256_file(source / "images_evaluation.zip")}
  assert sorted(p.name for p in (root / "splits").iterdir()) == ["SHA256SUMS", "vinyals_test.json"]


def test_download_of_incomplete_archive_is_refused(data_dir, tmp_path, monkeypatch):
  monkeypatch.setitem(omniglot.URLS, "images_background",
                      (data_dir / "omniglot" / "images_background_small1.zip").as_uri())
  with pytest.raises(paths.DataError, match="top-level folder.*expected 'images_background'"):
    omniglot.load("background", data_dir=tmp_path)
  assert list((tmp_path / "omniglot").iterdir()) == [], "no partial download may remain"


def test_offline_error_names_files_and_folder(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise urllib.error.URLError("network unreachable")
  monkeypatch.setattr(paths.urllib.request, "urlopen", offline)
  with pytest.raises(paths.MissingDataError) as info:
    omniglot.load("background", data_dir=tmp_path)
  message = str(info.value)
  assert "images_background.zip" in message and str(tmp_path / "omniglot") in message
  assert "network unreachable" in message
  assert list((tmp_path / "omniglot").iterdir()) == []


def test_missing_files_without_download(tmp_path):
  with pytest.raises(paths.MissingDataError,
                     match=rf"images_evaluation\.zip.*{re.escape(str(tmp_path / 'omniglot'))}"):
    omniglot.load("evaluation", data_dir=tmp_path, download=False)
  with pytest.raises(FileNotFoundError, match=r"vinyals_train\.json"):
    omniglot.load("vinyals_train", data_dir=tmp_path, download=False)
  assert not (tmp_path / "omniglot").exists()
