"""Broken data files, built in tmp_path: each must fail with an error naming file and problem."""
import gzip
import io
import json
import os
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from jmeta.data import digits
from jmeta.data import mnist
from jmeta.data import omniglot
from jmeta.data import paths
from jmeta.data.dataset import Dataset

ROOT = "images_background"


def _png(seed: int) -> bytes:
  """A 105x105 1-bit PNG like Omniglot's (1 = white background, 0 = ink)."""
  pixels = np.ones((105, 105), bool)
  pixels[20 + seed:60 + seed, 40:45] = False
  buffer = io.BytesIO()
  Image.fromarray(pixels).convert("1").save(buffer, format="PNG")
  return buffer.getvalue()


def _write_zip(path, members, *, dirs=(), compression=zipfile.ZIP_DEFLATED):
  """Writes ``members`` ({name: bytes}) plus directory entries ``dirs``."""
  with zipfile.ZipFile(path, "w", compression=compression) as z:
    for name in dirs:
      z.writestr(zipfile.ZipInfo(name), b"")
    for name, data in members.items():
      z.writestr(name, data)
  return path


def _valid_members():
  return {f"{ROOT}/Latin/character{c:02d}/{c:04d}_{i:02d}.png": _png(c + i)
          for c in (1, 2) for i in (1, 2, 3)}


@pytest.fixture
def small_zip(tmp_path):
  dirs = [f"{ROOT}/", f"{ROOT}/Latin/", f"{ROOT}/Latin/character01/",
          f"{ROOT}/Latin/character02/"]
  return _write_zip(tmp_path / f"{ROOT}.zip", _valid_members(), dirs=dirs)


def _data_dir_with(tmp_path, zip_bytes: bytes):
  folder = tmp_path / "data" / "omniglot"
  folder.mkdir(parents=True)
  (folder / f"{ROOT}.zip").write_bytes(zip_bytes)
  return tmp_path / "data"


def test_small_valid_zip_decodes(small_zip):
  ds = omniglot.decode_archive(small_zip, image_size=14)
  assert ds.images.shape == (6, 14, 14, 1) and ds.images.dtype == np.uint8
  assert ds.class_names == (f"{ROOT}/Latin/character01", f"{ROOT}/Latin/character02")
  np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 1])
  assert ds.images[0, 0, 0, 0] == 0 and ds.images.max() > 128


def test_corrupted_zip(tmp_path):
  data_dir = _data_dir_with(tmp_path, os.urandom(4096))
  path = data_dir / "omniglot" / f"{ROOT}.zip"
  with pytest.raises(paths.DataError, match=rf"{re.escape(str(path))}: not a valid zip archive"):
    omniglot.load("background", data_dir=data_dir)


def test_truncated_zip(tmp_path, small_zip):
  data = small_zip.read_bytes()
  data_dir = _data_dir_with(tmp_path, data[:len(data) // 2])
  with pytest.raises(paths.DataError, match=r"images_background\.zip: not a valid zip archive.*"
                     r"corrupted or truncated"):
    omniglot.load("background", data_dir=data_dir, download=False)


def test_corrupted_member_is_named(tmp_path):
  members = _valid_members()
  path = _write_zip(tmp_path / "x.zip", members, compression=zipfile.ZIP_STORED)
  data = bytearray(path.read_bytes())
  victim = sorted(members)[2]
  start = data.index(members[victim])  # Stored member: its bytes appear verbatim.
  data[start + len(members[victim]) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(paths.DataError, match=rf"x\.zip: cannot read member '{re.escape(victim)}'"
                     r".*Bad CRC"):
    omniglot.decode_archive(path)


def test_member_that_is_not_an_image(tmp_path):
  members = _valid_members()
  victim = sorted(members)[0]
  members[victim] = b"\x89PNG but not really"
  path = _write_zip(tmp_path / "x.zip", members)
  with pytest.raises(paths.DataError, match=rf"member '{re.escape(victim)}' is not a decodable"):
    omniglot.decode_archive(path)


@pytest.mark.parametrize("name", [f"{ROOT}/Latin/0001_01.png",
                                  f"{ROOT}/Latin/character01/extra/0001_01.png",
                                  "0001_01.png"])
def test_wrong_folder_layout(tmp_path, name):
  members = _valid_members()
  members[name] = _png(0)
  path = _write_zip(tmp_path / "x.zip", members)
  with pytest.raises(paths.DataError, match=rf"x\.zip: PNG member '{re.escape(name)}' is not at "
                     r"<root>/<alphabet>/<character>/<image>\.png"):
    omniglot.scan_archive(path)


def test_two_top_level_folders(tmp_path):
  members = _valid_members()
  members["images_evaluation/Latin/character01/0001_01.png"] = _png(0)
  path = _write_zip(tmp_path / "x.zip", members)
  with pytest.raises(paths.DataError, match="expected one top-level folder"):
    omniglot.scan_archive(path)


def test_class_with_zero_images(tmp_path):
  path = _write_zip(tmp_path / "x.zip", _valid_members(),
                    dirs=[f"{ROOT}/Latin/character03/"])
  with pytest.raises(paths.DataError,
                     match=rf"x\.zip: class folder '{ROOT}/Latin/character03/' has zero images"):
    omniglot.scan_archive(path)


def test_alphabet_without_characters(tmp_path):
  path = _write_zip(tmp_path / "x.zip", _valid_members(), dirs=[f"{ROOT}/Greek/"])
  with pytest.raises(paths.DataError, match=rf"alphabet folder '{ROOT}/Greek/' has no character"):
    omniglot.scan_archive(path)


def test_non_png_member(tmp_path):
  members = _valid_members()
  members[f"{ROOT}/Latin/character01/notes.txt"] = b"hello"
  path = _write_zip(tmp_path / "x.zip", members)
  with pytest.raises(paths.DataError, match=rf"x\.zip: unexpected non-PNG member "
                     rf"'{ROOT}/Latin/character01/notes\.txt'"):
    omniglot.scan_archive(path)


def test_archive_without_images(tmp_path):
  path = _write_zip(tmp_path / "x.zip", {}, dirs=[f"{ROOT}/"])
  with pytest.raises(paths.DataError, match=r"x\.zip: archive contains no PNG images"):
    omniglot.scan_archive(path)


@pytest.mark.parametrize("name", ["/etc/images_background/Latin/character01/0001_01.png",
                                  f"{ROOT}/../Latin/character01/0001_01.png",
                                  f"{ROOT}/Latin/../../character01/0001_01.png",
                                  f"{ROOT}\\Latin\\character01\\0001_01.png",
                                  "C:/images_background/Latin/character01/0001_01.png"])
def test_unsafe_member_names_are_refused(tmp_path, name):
  members = _valid_members()
  path = tmp_path / "x.zip"
  with zipfile.ZipFile(path, "w") as z:
    for member, data in members.items():
      z.writestr(member, data)
    info = zipfile.ZipInfo("placeholder")
    info.filename = name  # Bypass ZipInfo's normalisation to write the raw name.
    z.writestr(info, _png(0))
  with zipfile.ZipFile(path) as z:
    assert name in z.namelist()
  with pytest.raises(paths.DataError, match=rf"refusing archive member {re.escape(repr(name))}"):
    omniglot.scan_archive(path)


def test_counts_of_official_archive_are_checked(tmp_path, small_zip):
  data_dir = _data_dir_with(tmp_path, small_zip.read_bytes())
  with pytest.raises(paths.DataError, match=r"images_background\.zip: found 2 classes / 6 images, "
                     r"expected 964 / 19280"):
    omniglot.load("background", data_dir=data_dir)


def test_checksum_mismatch(tmp_path, data_dir):
  folder = tmp_path / "omniglot"
  folder.mkdir()
  (folder / "images_evaluation.zip").symlink_to(data_dir / "omniglot" / "images_evaluation.zip")
  (folder / "SHA256SUMS").write_text(f"{'ab' * 32}  images_evaluation.zip\n")
  with pytest.raises(paths.DataError, match=r"images_evaluation\.zip: SHA-256 [0-9a-f]{64} does "
                     r"not match abab.* listed in .*SHA256SUMS"):
    omniglot.load("evaluation", data_dir=tmp_path)


def _split_dir(tmp_path, split, content):
  folder = tmp_path / "omniglot" / "splits"
  folder.mkdir(parents=True)
  (folder / f"{split}.json").write_text(content)
  return tmp_path


@pytest.mark.parametrize("content,problem", [
    ("{}", "is empty"),
    ('{"background": {}}', "is empty"),
    ('{"background": {"Latin": []}}', "lists no characters"),
    ('{"train": {}}', "expected .*got top-level \\['train'\\]"),
    ('{"background": {"Latin": "character01"}}', "must be a list"),
    ('{"background": {"Latin": ["character01", "character01"]}}', "more than once"),
    ('{"background": {"..": ["character01"]}}', "invalid class"),
    ("[1, 2", "not valid JSON"),
])
def test_bad_split_file(tmp_path, content, problem):
  data_dir = _split_dir(tmp_path, "vinyals_val", content)
  with pytest.raises(paths.DataError, match=rf"vinyals_val\.json: .*{problem}"):
    omniglot.load("vinyals_val", data_dir=data_dir, download=False)


def test_split_naming_unknown_class():
  ds = Dataset(images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.array([0, 1], np.int32),
               class_names=("a/b/character01", "a/b/character02"))
  with pytest.raises(paths.DataError, match=r"split\.json: 1 class\(es\) not found.*character09"):
    omniglot.select_classes(ds, ["a/b/character09", "a/b/character01"], source="split.json")
  kept = omniglot.select_classes(ds, ["a/b/character02", "a/b/character01"])
  np.testing.assert_array_equal(kept.labels, [0, 1])
  assert kept.class_names == ("a/b/character02", "a/b/character01")


def _idx(magic, shape, body_len=None):
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
  return header + bytes(int(np.prod(shape)) if body_len is None else body_len)


def _mnist_dir(tmp_path, images: bytes, labels: bytes, *, gz=True):
  folder = tmp_path / "mnist"
  folder.mkdir()
  for name, data in ((mnist.IMAGES_FILE, images), (mnist.LABELS_FILE, labels)):
    (folder / name).write_bytes(gzip.compress(data) if gz else data)
  return tmp_path


def test_idx_bad_magic(tmp_path):
  data_dir = _mnist_dir(tmp_path, _idx(2049, (3, 28, 28)), _idx(2049, (3,)))
  with pytest.raises(paths.DataError, match=r"t10k-images-idx3-ubyte\.gz: IDX magic number 2049, "
                     r"expected 2051"):
    mnist.load(data_dir=data_dir)


def test_idx_truncated_body(tmp_path):
  data_dir = _mnist_dir(tmp_path, _idx(2051, (3, 28, 28)), _idx(2049, (3,), body_len=2))
  with pytest.raises(paths.DataError, match=r"t10k-labels-idx1-ubyte\.gz: IDX body truncated: "
                     r"header says shape \(3,\) = 3 bytes, file has 2"):
    mnist.load(data_dir=data_dir)


def test_idx_truncated_header(tmp_path):
  data_dir = _mnist_dir(tmp_path, _idx(2051, (3, 28, 28))[:10], _idx(2049, (3,)))
  with pytest.raises(paths.DataError, match=r"images-idx3-ubyte\.gz: truncated IDX header"):
    mnist.load(data_dir=data_dir)


def test_idx_truncated_gzip(tmp_path):
  data_dir = _mnist_dir(tmp_path, _idx(2051, (3, 28, 28)), _idx(2049, (3,)))
  path = data_dir / "mnist" / mnist.IMAGES_FILE
  path.write_bytes(path.read_bytes()[:30])
  with pytest.raises(paths.DataError, match=r"images-idx3-ubyte\.gz: corrupted or truncated gzip"):
    mnist.load(data_dir=data_dir)


def test_idx_count_mismatch_and_bad_label(tmp_path):
  data_dir = _mnist_dir(tmp_path, _idx(2051, (3, 28, 28)), _idx(2049, (4,)))
  with pytest.raises(paths.DataError, match=r"has 3 images but .*labels-idx1-ubyte\.gz has 4"):
    mnist.load(data_dir=data_dir)
  (data_dir / "mnist" / mnist.LABELS_FILE).write_bytes(
      gzip.compress(_idx(2049, (3,))[:-1] + b"\x0a"))
  with pytest.raises(paths.DataError, match=r"labels-idx1-ubyte\.gz: label 10 out of range"):
    mnist.load(data_dir=data_dir)


def test_mnist_missing_files(tmp_path):
  with pytest.raises(paths.MissingDataError, match=r"t10k-images-idx3-ubyte\.gz, "
                     rf"t10k-labels-idx1-ubyte\.gz; put them in {re.escape(str(tmp_path))}"):
    mnist.load(data_dir=tmp_path)


@pytest.mark.parametrize("row,problem", [
    (",".join(["0"] * 64), r":2: expected 65 comma-separated integers"),
    (",".join(["0"] * 63 + ["x", "1"]), r":2: expected 65 comma-separated integers"),
    (",".join(["0"] * 63 + ["17", "1"]), r":2: pixel value 17 out of range 0\.\.16"),
    (",".join(["0"] * 64 + ["10"]), r":2: label value 10 out of range 0\.\.9"),
])
def test_bad_digits_rows(tmp_path, row, problem):
  folder = tmp_path / "sklearn_digits"
  folder.mkdir()
  good = ",".join(["0"] * 64 + ["3"])
  (folder / digits.FILE).write_bytes(gzip.compress(f"{good}\n{row}\n".encode()))
  with pytest.raises(paths.DataError, match=rf"digits\.csv\.gz{problem}"):
    digits.load(data_dir=tmp_path)


def test_empty_digits_file(tmp_path):
  folder = tmp_path / "sklearn_digits"
  folder.mkdir()
  (folder / digits.FILE).write_bytes(gzip.compress(b""))
  with pytest.raises(paths.DataError, match=r"digits\.csv\.gz: no rows"):
    digits.load(data_dir=tmp_path)


def test_bad_checksum_file(tmp_path):
  (tmp_path / "SHA256SUMS").write_text("nothex  file.bin\n")
  with pytest.raises(paths.DataError, match=r"SHA256SUMS:1: expected '<sha256 hex> <file name>'"):
    paths.read_checksums(tmp_path)


def test_cache_never_pickles(tmp_path):
  with pytest.raises(TypeError, match="object array"):
    paths.save_npz(tmp_path / "x.npz", names=np.array([{"a": 1}], dtype=object))
  assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == "[]"
