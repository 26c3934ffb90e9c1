"""Omniglot (Lake et al. 2015), read straight from the official zip archives.

Files, under ``<data_dir>/omniglot/`` (see `jmeta.data.paths` for the data directory)::

  images_background.zip     images_background/<Alphabet>/characterNN/IIII_DD.png  964 / 19,280
  images_evaluation.zip     images_evaluation/<Alphabet>/characterNN/IIII_DD.png  659 / 13,180
  splits/vinyals_{train,val,test}.json    Vinyals et al. (2016) class split (as in Torchmeta)

A class is one character folder, named ``"images_background/Latin/character01"``. Classes are
numbered in sorted order of these names, and the images of a class in sorted member order
(``IIII_01.png`` ... ``IIII_20.png``), so labels and image order are deterministic.

Pixels: the 105x105 1-bit PNGs are inverted to ink high (0 -> 255), resized as float images
with antialiased ``LANCZOS`` (`Dataset.resize_image`), rounded and clipped to uint8 (255 = full
ink, 0 = background). ``image_size=None`` keeps 105x105 with values {0, 255}.

Rotations (``rotations=True``) are applied after resizing, with ``np.rot90``; since the
resize kernel is symmetric, rotating first and resizing after gives the same pixels.

Decoding an archive takes a few seconds, so its result is cached once per (archive content,
image size) as a compressed ``.npz`` in the cache directory (`paths.resolve_cache_dir`). Cache
files are keyed by the archive's SHA-256, loaded with ``allow_pickle=False`` and validated;
an invalid cache file is reported with a warning and rebuilt.
"""
import io
import json
import pathlib
import warnings
import zipfile
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from jmeta.data import paths
from jmeta.data.dataset import Dataset
from jmeta.data.paths import DataError

ARCHIVES = {"background": "images_background", "evaluation": "images_evaluation"}
SPLITS = ("background", "evaluation", "vinyals_train", "vinyals_val", "vinyals_test")
VINYALS_SPLITS = ("vinyals_train", "vinyals_val", "vinyals_test")

# Official archives; the shared offline copies hold the same PNGs in rebuilt (not byte-identical)
# zips, so downloads are verified by structure and counts, not by a fixed hash.
URLS = {
    "images_background":
        "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "images_evaluation":
        "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
}
# (classes, images) of each official archive; every class has IMAGES_PER_CLASS images.
EXPECTED_COUNTS = {"images_background": (964, 19280), "images_evaluation": (659, 13180)}
IMAGES_PER_CLASS = 20

# Vinyals splits, verbatim from Torchmeta at a pinned commit, so verified by hash.
_TORCHMETA = ("https://raw.githubusercontent.com/tristandeleu/pytorch-meta/"
              "d55d89ebd47f340180267106bde3e4b723f23762/torchmeta/datasets/assets/omniglot/")
SPLIT_URLS = {f"vinyals_{s}": f"{_TORCHMETA}{s}.json" for s in ("train", "val", "test")}
SPLIT_SHA256 = {
    "vinyals_train": "3432d95c10f2959c3894a2bebe63f70600b5c567a912d13200699b0634d7b191",
    "vinyals_val": "4aca6cbef626e818dace533b4c46363830eaaa158f2d06e29beb3e9772258d5f",
    "vinyals_test": "c3604a268c3e6bfb5f010e839dd986d0f149bfc81a93cf5de239a0543effea86",
}

ROTATIONS = (0, 90, 180, 270)
_CACHE_VERSION = 1  # Bump whenever decoded pixels change (e.g. another resize filter).


def load(split: str, *, data_dir: Optional[paths.PathLike] = None,
         image_size: Optional[int] = 28, rotations: bool = False, download: bool = True,
         cache_dir: Optional[paths.PathLike] = None) -> Dataset:
  """Loads an Omniglot split as a `Dataset` of ``[N, S, S, 1]`` uint8 images, ink high.

  Args:
    split: ``"background"`` or ``"evaluation"`` (a whole official archive), or
      ``"vinyals_train"`` / ``"vinyals_val"`` / ``"vinyals_test"`` (1,028 / 172 / 423
      characters; ``vinyals_train`` takes characters from both archives).
    data_dir: Data directory (default: ``$JMETA_DATA_DIR``, else ``~/.cache/jmeta``).
    image_size: Output side length ``S``; ``None`` keeps the original 105.
    rotations: If True, every character in each of the rotations 0, 90, 180 and 270 degrees
      is its own class (see `rotate_classes` for the label order).
    download: If an archive or split file is missing, fetch it from the official URL (with
      verification) instead of raising `paths.MissingDataError`.
    cache_dir: Where decoded arrays are cached (default: `paths.resolve_cache_dir`).

  Returns:
    The split; classes in sorted class-name order, ``class_names[label]`` like
    ``"images_background/Latin/character01"`` (plus ``"/rot090"`` etc. with rotations).

  Raises:
    ValueError: for an unknown ``split`` or a bad ``image_size``.
    paths.MissingDataError: if files are missing and cannot be downloaded.
    paths.DataError: if an archive, split file or cache is malformed.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  _check_image_size(image_size)
  if split in ARCHIVES:
    dataset = load_archive(ARCHIVES[split], data_dir=data_dir, image_size=image_size,
                           download=download, cache_dir=cache_dir)
  else:
    root = paths.resolve_data_dir(data_dir) / "omniglot"
    classes = read_split(split, data_dir=data_dir, download=download)
    archives = sorted({name.split("/", 1)[0] for name in classes})
    _ensure_archives(root, archives, download=download)
    parts = [load_archive(a, data_dir=data_dir, image_size=image_size, download=False,
                          cache_dir=cache_dir) for a in archives]
    dataset = select_classes(_concat(parts), classes, source=str(_split_path(root, split)))
  return rotate_classes(dataset) if rotations else dataset


def load_archive(archive: str, *, data_dir: Optional[paths.PathLike] = None,
                 image_size: Optional[int] = 28, download: bool = True,
                 cache_dir: Optional[paths.PathLike] = None) -> Dataset:
  """Loads one whole official archive (``"images_background"`` or ``"images_evaluation"``).

  Checks the archive against ``SHA256SUMS`` (if its folder has one) and its class and image
  counts against `EXPECTED_COUNTS`, then returns the cached decode or decodes and caches.

  Args:
    archive: Archive name without ``.zip``.
    data_dir: Data directory, as in `load`.
    image_size: Output side length; ``None`` keeps 105.
    download: Fetch the archive if it is missing, as in `load`.
    cache_dir: Cache directory, as in `load`.

  Returns:
    The archive's `Dataset`.
  """
  if archive not in EXPECTED_COUNTS:
    raise ValueError(f"archive must be one of {tuple(EXPECTED_COUNTS)}, got {archive!r}")
  _check_image_size(image_size)
  root = paths.resolve_data_dir(data_dir) / "omniglot"
  _ensure_archives(root, [archive], download=download)
  zip_path = root / f"{archive}.zip"
  digest = paths.verify_checksum(zip_path)
  size_tag = "orig" if image_size is None else f"{image_size}px"
  cache_path = (paths.resolve_cache_dir(data_dir, cache_dir=cache_dir) /
                f"omniglot-{archive}-{size_tag}-v{_CACHE_VERSION}-{digest[:16]}.npz")
  if cache_path.is_file():
    try:
      return _read_cache(cache_path, archive=archive, digest=digest, image_size=image_size)
    except DataError as e:
      warnings.warn(f"Rebuilding invalid Omniglot cache file: {e}", stacklevel=2)
  members = scan_archive(zip_path)
  _check_counts(zip_path, archive, members)
  dataset = decode_archive(zip_path, image_size=image_size, members=members)
  paths.save_npz(cache_path, images=dataset.images, labels=dataset.labels,
                 class_names=np.asarray(dataset.class_names, dtype=np.str_),
                 source_sha256=np.asarray(digest), version=np.asarray(_CACHE_VERSION))
  return dataset


def scan_archive(zip_path: paths.PathLike) -> List[Tuple[str, str]]:
  """Lists and validates the image members of an Omniglot-layout archive, without decoding.

  Every file member must be ``<root>/<alphabet>/<character>/<name>.png`` with one common
  ``<root>``; directory entries may only be those folders, and every character folder (and
  alphabet folder) listed as a directory entry must contain images. Member names that are
  absolute or contain ``..`` (or backslashes, or empty components) are refused even though
  members are only read, never extracted.

  Args:
    zip_path: The archive.

  Returns:
    ``[(member name, class name)]`` in sorted member order, class name =
    ``<root>/<alphabet>/<character>``.

  Raises:
    paths.DataError: naming the archive and the offending member.
  """
  zip_path = pathlib.Path(zip_path)
  with _open_zip(zip_path) as archive:
    names = archive.namelist()
  members, dirs, roots = [], set(), set()
  for name in names:
    parts = _safe_parts(zip_path, name)
    roots.add(parts[0])
    if name.endswith("/"):
      if len(parts) > 3:
        raise DataError(f"{zip_path}: unexpected folder {name!r}; expected the layout "
                        "<root>/<alphabet>/<character>/<image>.png")
      dirs.add("/".join(parts))
    elif not parts[-1].lower().endswith(".png"):
      raise DataError(f"{zip_path}: unexpected non-PNG member {name!r}; an Omniglot archive "
                      "holds only <root>/<alphabet>/<character>/<image>.png files")
    elif len(parts) != 4:
      raise DataError(f"{zip_path}: PNG member {name!r} is not at "
                      "<root>/<alphabet>/<character>/<image>.png (wrong folder layout)")
    else:
      members.append((name, "/".join(parts[:3])))
  if len(roots) > 1:
    raise DataError(f"{zip_path}: expected one top-level folder, found {sorted(roots)}")
  if not members:
    raise DataError(f"{zip_path}: archive contains no PNG images")
  classes = {c for _, c in members}
  alphabets = {c.rsplit("/", 1)[0] for c in classes}
  for folder in sorted(dirs):
    depth = folder.count("/")
    if depth == 2 and folder not in classes:
      raise DataError(f"{zip_path}: class folder {folder + '/'!r} has zero images")
    if depth == 1 and folder not in alphabets:
      raise DataError(f"{zip_path}: alphabet folder {folder + '/'!r} has no character folders")
  members.sort()
  return members


def decode_archive(zip_path: paths.PathLike, *, image_size: Optional[int] = 28,
                   members: Optional[Sequence[Tuple[str, str]]] = None) -> Dataset:
  """Decodes every image of an Omniglot-layout archive (no cache, no count check).

  Args:
    zip_path: The archive.
    image_size: Output side length; ``None`` keeps the original size (all images must then
      have the same size).
    members: Output of `scan_archive` if already computed.

  Returns:
    `Dataset` with ``[N, S, S, 1]`` uint8 images (ink 255), classes in sorted name order.

  Raises:
    paths.DataError: naming the archive and member for unreadable or corrupt content.
  """
  import tqdm  # pylint: disable=g-import-not-at-top

  _check_image_size(image_size)
  zip_path = pathlib.Path(zip_path)
  members = scan_archive(zip_path) if members is None else members
  class_names = tuple(sorted({c for _, c in members}))
  index = {c: i for i, c in enumerate(class_names)}
  labels = np.asarray([index[c] for _, c in members], dtype=np.int32)
  images = None
  with _open_zip(zip_path) as archive:
    for i, (name, _) in enumerate(tqdm.tqdm(members, desc=f"Decoding {zip_path.name}",
                                            unit="img", disable=None, leave=False)):
      ink = _decode_member(zip_path, archive, name)
      if image_size is None:
        image = ink.astype(np.uint8)[:, :, None]
      else:
        image = Dataset.resize_image(ink, image_size)
      if images is None:
        images = np.empty((len(members), *image.shape), np.uint8)
      elif image.shape != images.shape[1:]:
        raise DataError(f"{zip_path}: member {name!r} is {ink.shape[1]}x{ink.shape[0]}, unlike "
                        f"the first image ({images.shape[2]}x{images.shape[1]}); pass an "
                        "image_size to resize")
      images[i] = image
  return Dataset(images=images, labels=labels, class_names=class_names)


def read_split(split: str, *, data_dir: Optional[paths.PathLike] = None,
               download: bool = True) -> Tuple[str, ...]:
  """Reads a Vinyals split file into its sorted class names.

  Class names look like ``"images_background/Latin/character01"``.

  Args:
    split: One of `VINYALS_SPLITS`.
    data_dir: Data directory, as in `load`.
    download: Fetch the (hash-verified) split file from Torchmeta if it is missing.

  Returns:
    The split's class names, sorted.

  Raises:
    paths.DataError: if the file is not ``{"background"|"evaluation": {alphabet: [character,
      ...]}}``, names a class twice, or names no class at all.
  """
  if split not in VINYALS_SPLITS:
    raise ValueError(f"split must be one of {VINYALS_SPLITS}, got {split!r}")
  root = paths.resolve_data_dir(data_dir) / "omniglot"
  path = _split_path(root, split)
  if not path.is_file():
    if not download:
      paths.require_files([path], what=f"Omniglot split {split!r}",
                          hint=f"It is Torchmeta's file {SPLIT_URLS[split]}.")
    tmp = paths.download(SPLIT_URLS[split], path)
    digest = paths.sha256_file(tmp)
    if digest != SPLIT_SHA256[split]:
      tmp.unlink()
      raise DataError(f"downloaded {SPLIT_URLS[split]} has SHA-256 {digest}, expected "
                      f"{SPLIT_SHA256[split]}")
    tmp.replace(path)
    paths.record_checksum(path, digest)
  paths.verify_checksum(path)
  try:
    spec = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: not valid JSON ({e})") from e
  expected = ('{"background"|"evaluation": {alphabet: [character, ...]}}')
  if not isinstance(spec, dict) or not set(spec) <= set(ARCHIVES):
    raise DataError(f"{path}: expected {expected}, got top-level "
                    f"{sorted(spec) if isinstance(spec, dict) else type(spec).__name__}")
  classes = []
  for zip_key, alphabets in spec.items():
    if not isinstance(alphabets, dict):
      raise DataError(f"{path}: [{zip_key!r}] must map alphabet to characters, expected "
                      f"{expected}")
    for alphabet, characters in alphabets.items():
      if not isinstance(characters, list) or not all(isinstance(c, str) for c in characters):
        raise DataError(f"{path}: [{zip_key!r}][{alphabet!r}] must be a list of character "
                        f"folder names, expected {expected}")
      if not characters:
        raise DataError(f"{path}: alphabet {alphabet!r} in {zip_key!r} lists no characters")
      for character in characters:
        name = f"{ARCHIVES[zip_key]}/{alphabet}/{character}"
        if "/" in alphabet or "/" in character or ".." in (alphabet, character):
          raise DataError(f"{path}: invalid class {name!r}")
        classes.append(name)
  if not classes:
    raise DataError(f"{path}: split {split!r} is empty (names no classes)")
  if len(set(classes)) != len(classes):
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    raise DataError(f"{path}: classes listed more than once: {duplicates[:5]}")
  return tuple(sorted(classes))


def select_classes(dataset: Dataset, class_names: Sequence[str], *, source: str = "") -> Dataset:
  """Keeps the named classes of ``dataset``, relabelled in the order of ``class_names``.

  Args:
    dataset: A dataset whose ``class_names`` include all of ``class_names``.
    class_names: Classes to keep; label ``i`` becomes ``class_names[i]``.
    source: Where the names come from, for error messages.

  Returns:
    The subset, images in order of their new label (stable within a class).

  Raises:
    paths.DataError: if a requested class is not in ``dataset``.
  """
  index = {c: i for i, c in enumerate(dataset.class_names)}
  missing = [c for c in class_names if c not in index]
  if missing:
    raise DataError(f"{source or 'select_classes'}: {len(missing)} class(es) not found in the "
                    f"archive(s), e.g. {missing[:3]}")
  new_label = np.full(len(dataset.class_names), -1, np.int64)
  new_label[[index[c] for c in class_names]] = np.arange(len(class_names))
  labels = new_label[dataset.labels]
  keep = np.flatnonzero(labels >= 0)
  order = keep[np.argsort(labels[keep], kind="stable")]
  return Dataset(images=dataset.images[order], labels=labels[order].astype(np.int32),
                 class_names=tuple(class_names))


def rotate_classes(dataset: Dataset) -> Dataset:
  """Makes each class in each of the four rotations a separate class (4x the classes).

  Label order is rotation-major: with ``C`` classes, label ``k * C + c`` is class ``c``
  rotated by ``ROTATIONS[k]`` degrees counterclockwise, i.e. ``np.rot90(image, k)``, named
  ``class_names[c] + "/rot000"`` / ``"/rot090"`` / ``"/rot180"`` / ``"/rot270"``. Images are
  rotated after resizing, so the rotated images are exact ``np.rot90`` of the unrotated ones,
  and the first ``N`` images/labels are the unrotated dataset's.

  Args:
    dataset: Square images ``[N, S, S, C]``.

  Returns:
    A dataset with ``4 N`` images and ``4 C`` classes.
  """
  count = len(dataset.class_names)
  images = np.concatenate([np.rot90(dataset.images, k, axes=(1, 2))
                           for k in range(len(ROTATIONS))])
  labels = np.concatenate([dataset.labels + k * count for k in range(len(ROTATIONS))])
  names = tuple(f"{name}/rot{angle:03d}" for angle in ROTATIONS for name in dataset.class_names)
  return Dataset(images=images, labels=labels.astype(np.int32), class_names=names)


def _check_image_size(image_size):
  if image_size is not None and (isinstance(image_size, bool) or
                                 not isinstance(image_size, (int, np.integer)) or
                                 image_size < 1):
    raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")


def _split_path(root: pathlib.Path, split: str) -> pathlib.Path:
  return root / "splits" / f"{split}.json"


def _open_zip(zip_path: pathlib.Path) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(zip_path)
  except (FileNotFoundError, PermissionError, IsADirectoryError):
    raise
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
    raise DataError(f"{zip_path}: not a valid zip archive ({e}); the file is corrupted or "
                    "truncated, delete it and fetch it again") from e


def _safe_parts(zip_path: pathlib.Path, name: str) -> List[str]:
  parts = name.rstrip("/").split("/")
  if (not name or name.startswith("/") or "\\" in name or ":" in parts[0] or
      any(p in ("", ".", "..") for p in parts)):
    raise DataError(f"{zip_path}: refusing archive member {name!r} (absolute path, '..' or "
                    "empty component, or backslash)")
  return parts


def _decode_member(zip_path: pathlib.Path, archive: zipfile.ZipFile, name: str) -> np.ndarray:
  """Returns one member as a float32 [H, W] ink image on the 0..255 scale (ink high)."""
  try:
    data = archive.read(name)
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
    raise DataError(f"{zip_path}: cannot read member {name!r} ({e}); the archive is corrupted "
                    "or truncated") from e
  try:
    with Image.open(io.BytesIO(data)) as img:
      gray = np.asarray(img.convert("L"), dtype=np.float32)
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f"{zip_path}: member {name!r} is not a decodable image ({e})") from e
  return 255.0 - gray


def _check_counts(zip_path: pathlib.Path, archive: str, members) -> None:
  root = {c.split("/", 1)[0] for _, c in members}
  if root != {archive}:
    raise DataError(f"{zip_path}: top-level folder is {sorted(root)}, expected {archive!r}")
  num_classes, num_images = EXPECTED_COUNTS[archive]
  per_class: Dict[str, int] = {}
  for _, c in members:
    per_class[c] = per_class.get(c, 0) + 1
  if (len(per_class), len(members)) != (num_classes, num_images):
    raise DataError(f"{zip_path}: found {len(per_class)} classes / {len(members)} images, "
                    f"expected {num_classes} / {num_images} (incomplete or wrong archive)")
  odd = {c: n for c, n in per_class.items() if n != IMAGES_PER_CLASS}
  if odd:
    raise DataError(f"{zip_path}: expected {IMAGES_PER_CLASS} images per class, got "
                    f"{dict(sorted(odd.items())[:3])}")


def _ensure_archives(root: pathlib.Path, archives: Sequence[str], *, download: bool) -> None:
  """Makes sure the archives exist, downloading and verifying missing ones if allowed."""
  missing = [a for a in archives if not (root / f"{a}.zip").is_file()]
  if not missing:
    return
  hint = "Official URLs: " + ", ".join(URLS[a] for a in missing) + "."
  if not download:
    paths.require_files([root / f"{a}.zip" for a in missing], what="Omniglot", hint=hint)
  for archive in missing:
    dest = root / f"{archive}.zip"
    try:
      tmp = paths.download(URLS[archive], dest)
    except paths.MissingDataError as e:
      raise paths.MissingDataError(
          f"Omniglot: missing file(s) {', '.join(a + '.zip' for a in missing)}; put them in "
          f"{root} (download failed: {e})") from e
    try:
      _verify_download(tmp, archive, URLS[archive])
    except BaseException:
      tmp.unlink(missing_ok=True)
      raise
    tmp.replace(dest)
    paths.record_checksum(dest)


def _verify_download(tmp: pathlib.Path, archive: str, url: str) -> None:
  """Structure check of a downloaded archive: zip integrity, layout and counts."""
  with _open_zip(tmp) as z:
    try:
      bad = z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
      raise DataError(f"download of {url} is corrupted ({e})") from e
  if bad is not None:
    raise DataError(f"download of {url} is corrupted: bad CRC for member {bad!r}")
  _check_counts(tmp, archive, scan_archive(tmp))


def _concat(parts: Sequence[Dataset]) -> Dataset:
  if len(parts) == 1:
    return parts[0]
  offsets = np.cumsum([0] + [len(p.class_names) for p in parts])
  return Dataset(images=np.concatenate([p.images for p in parts]),
                 labels=np.concatenate([p.labels + o for p, o in zip(parts, offsets)]),
                 class_names=sum((tuple(p.class_names) for p in parts), ()))


def _read_cache(path: pathlib.Path, *, archive: str, digest: str,
                image_size: Optional[int]) -> Dataset:
  """Loads and validates a cache file; raises DataError describing what is wrong."""
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise DataError(f"{path}: unreadable ({e})") from e
  need = {"images", "labels", "class_names", "source_sha256", "version"}
  if not need <= set(arrays):
    raise DataError(f"{path}: missing arrays {sorted(need - set(arrays))}")
  images, labels, names = arrays["images"], arrays["labels"], arrays["class_names"]
  num_classes, num_images = EXPECTED_COUNTS[archive]
  side = 105 if image_size is None else image_size
  problems = []
  if int(arrays["version"]) != _CACHE_VERSION or str(arrays["source_sha256"]) != digest:
    problems.append("version or source archive SHA-256 differs")
  if images.dtype != np.uint8 or images.shape != (num_images, side, side, 1):
    problems.append(f"images {images.dtype}{list(images.shape)}, expected "
                    f"uint8[{num_images}, {side}, {side}, 1]")
  if labels.dtype != np.int32 or labels.shape != (num_images,):
    problems.append(f"labels {labels.dtype}{list(labels.shape)}, expected int32[{num_images}]")
  elif np.any(np.diff(labels) < 0) or labels[0] != 0 or labels[-1] != num_classes - 1:
    problems.append("labels are not sorted 0..C-1")
  if names.dtype.kind != "U" or names.shape != (num_classes,):
    problems.append(f"class_names {names.dtype}{list(names.shape)}, expected {num_classes} str")
  elif not all(n.startswith(archive + "/") for n in names.tolist()):
    problems.append(f"class names outside {archive!r}")
  if problems:
    raise DataError(f"{path}: " + "; ".join(problems))
  return Dataset(images=images, labels=labels, class_names=tuple(names.tolist()))
