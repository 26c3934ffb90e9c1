"""Where jmeta's data lives, and how files get there intact.

Two directories matter:

* The *data directory* holds the raw files (archives, IDX files, CSVs) in the layout::

    <data_dir>/omniglot/images_background.zip
    <data_dir>/omniglot/images_evaluation.zip
    <data_dir>/omniglot/splits/vinyals_{train,val,test}.json
    <data_dir>/mnist/t10k-images-idx3-ubyte.gz
    <data_dir>/mnist/t10k-labels-idx1-ubyte.gz
    <data_dir>/sklearn_digits/digits.csv.gz

  It is the ``data_dir`` argument if given, else ``$JMETA_DATA_DIR``, else the per-user cache
  root ``$XDG_CACHE_HOME/jmeta`` (``~/.cache/jmeta`` when ``XDG_CACHE_HOME`` is unset).

* The *cache directory* holds derived files (decoded ``.npz`` arrays). It is the ``cache_dir``
  argument if given, else ``$JMETA_CACHE_DIR``, else ``<data_dir>/cache`` when the data
  directory is writable, else ``<user cache root>/cache``. A directory counts as writable only
  if its permission bits allow writing, so a read-only shared data directory is never written
  to, not even by root (who bypasses permission checks).

Any folder of the data directory may hold a ``SHA256SUMS`` file (``sha256sum`` format); every
file listed there is checked before it is read.
"""
import hashlib
import os
import pathlib
import stat
import tempfile
import urllib.error
import urllib.request
from typing import Iterable, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]

DATA_DIR_ENV = "JMETA_DATA_DIR"
CACHE_DIR_ENV = "JMETA_CACHE_DIR"
CHECKSUMS_FILE = "SHA256SUMS"
_CHUNK = 1 << 20
_FILE_MODE = 0o644  # mkstemp creates 0600 files; finished files are world-readable.


class DataError(ValueError):
  """A data file exists but its content is not what jmeta expects."""


class MissingDataError(FileNotFoundError):
  """Data files are missing and could not (or may not) be downloaded."""


def user_cache_root() -> pathlib.Path:
  """Returns ``$XDG_CACHE_HOME/jmeta``, or ``~/.cache/jmeta`` if ``XDG_CACHE_HOME`` is unset."""
  xdg = os.environ.get("XDG_CACHE_HOME")
  base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
  return base / "jmeta"


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> pathlib.Path:
  """Returns the data directory: ``data_dir``, else ``$JMETA_DATA_DIR``, else the user cache root.

  The directory is not created here; loaders report missing files themselves.
  """
  if data_dir is not None:
    return pathlib.Path(data_dir).expanduser()
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return pathlib.Path(env).expanduser()
  return user_cache_root()


def is_writable_dir(path: PathLike) -> bool:
  """Whether ``path`` is an existing directory that we may write into.

  Requires both ``os.access(W_OK)`` and a write permission bit, so that a directory marked
  read-only (``r-x``) is treated as read-only even for root.
  """
  path = pathlib.Path(path)
  try:
    mode = path.stat().st_mode
  except OSError:
    return False
  return (stat.S_ISDIR(mode) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
          and os.access(path, os.W_OK))


def _creatable_dir(path: pathlib.Path) -> bool:
  """Whether ``path`` exists writable, or its nearest existing ancestor is writable."""
  for candidate in (path, *path.parents):
    if candidate.exists():
      return is_writable_dir(candidate)
  return False


def resolve_cache_dir(data_dir: Optional[PathLike] = None, *,
                      cache_dir: Optional[PathLike] = None) -> pathlib.Path:
  """Returns (and creates) the directory for derived files such as decoded ``.npz`` arrays.

  Args:
    data_dir: The data directory the cached files derive from (resolved as in
      `resolve_data_dir`).
    cache_dir: Explicit cache directory; overrides everything else.

  Returns:
    ``cache_dir``, else ``$JMETA_CACHE_DIR``, else ``<data_dir>/cache`` if the data directory is
    writable, else ``<user cache root>/cache``.
  """
  if cache_dir is not None:
    path = pathlib.Path(cache_dir).expanduser()
  elif os.environ.get(CACHE_DIR_ENV):
    path = pathlib.Path(os.environ[CACHE_DIR_ENV]).expanduser()
  else:
    root = resolve_data_dir(data_dir)
    path = root / "cache" if is_writable_dir(root) else user_cache_root() / "cache"
  path.mkdir(parents=True, exist_ok=True)
  return path


def sha256_file(path: PathLike) -> str:
  """Returns the hex SHA-256 digest of a file."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def read_checksums(folder: PathLike) -> dict:
  """Parses ``<folder>/SHA256SUMS`` into ``{file name: hex digest}`` ({} if there is none).

  Raises:
    DataError: if a line is not ``<64 hex digits> <space or *><name>``.
  """
  sums_path = pathlib.Path(folder) / CHECKSUMS_FILE
  if not sums_path.is_file():
    return {}
  sums = {}
  for lineno, line in enumerate(sums_path.read_text().splitlines(), start=1):
    if not line.strip() or line.startswith("#"):
      continue
    digest, _, name = line.partition(" ")
    name = name[1:] if name[:1] in (" ", "*") else name
    if len(digest) != 64 or not name or any(c not in "0123456789abcdefABCDEF" for c in digest):
      raise DataError(f"{sums_path}:{lineno}: expected '<sha256 hex> <file name>', "
                      f"got {line!r}")
    sums[name] = digest.lower()
  return sums


def verify_checksum(path: PathLike) -> str:
  """Checks a file against the ``SHA256SUMS`` of its folder, if that lists it.

  Args:
    path: The file to check.

  Returns:
    The file's hex SHA-256 digest (computed whether or not a checksum is listed).

  Raises:
    DataError: if ``SHA256SUMS`` lists the file with a different digest.
  """
  path = pathlib.Path(path)
  digest = sha256_file(path)
  expected = read_checksums(path.parent).get(path.name)
  if expected is not None and expected != digest:
    raise DataError(f"{path}: SHA-256 {digest} does not match {expected} listed in "
                    f"{path.parent / CHECKSUMS_FILE}; the file is corrupted or was replaced. "
                    f"Delete it (and fix {CHECKSUMS_FILE}) and fetch it again.")
  return digest


def record_checksum(path: PathLike, digest: Optional[str] = None) -> str:
  """Writes a file's SHA-256 into the ``SHA256SUMS`` of its folder, replacing an old entry.

  Args:
    path: The file whose digest to record.
    digest: Its digest if already known (computed otherwise).

  Returns:
    The recorded hex digest.
  """
  path = pathlib.Path(path)
  digest = digest or sha256_file(path)
  sums = read_checksums(path.parent)
  sums[path.name] = digest
  text = "".join(f"{d}  {n}\n" for n, d in sorted(sums.items()))
  _atomic_write_bytes(path.parent / CHECKSUMS_FILE, text.encode())
  return digest


def require_files(paths: Iterable[PathLike], *, what: str, hint: str = "") -> None:
  """Raises `MissingDataError` naming every missing file and the folder(s) to put them in.

  Args:
    paths: Files that must exist.
    what: Human-readable name of the data set, for the message.
    hint: Extra advice appended to the message (e.g. download URLs).
  """
  missing = [pathlib.Path(p) for p in paths if not pathlib.Path(p).is_file()]
  if not missing:
    return
  folders = sorted({str(p.parent) for p in missing})
  names = ", ".join(p.name for p in missing)
  message = (f"{what}: missing file(s) {names}; put them in {' and '.join(folders)} "
             f"(data directory: pass data_dir=... or set ${DATA_DIR_ENV}).")
  raise MissingDataError(message + (f" {hint}" if hint else ""))


def _atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def download(url: str, dest: PathLike, *, timeout: float = 60.0) -> pathlib.Path:
  """Downloads ``url`` to a temporary file next to ``dest`` with a tqdm progress bar.

  The caller verifies the temporary file and then moves it into place with ``os.replace``, so a
  failed or interrupted download never leaves a partial file under the final name.

  Args:
    url: Source URL (``https://`` or ``file://``).
    dest: The final path; its folder is created if needed and must be writable.
    timeout: Socket timeout in seconds.

  Returns:
    Path of the downloaded temporary file (in ``dest``'s folder).

  Raises:
    MissingDataError: if the folder is not writable or the download fails (e.g. offline).
  """
  import tqdm  # pylint: disable=g-import-not-at-top

  dest = pathlib.Path(dest)
  if not _creatable_dir(dest.parent):
    raise MissingDataError(f"{dest} is missing and its folder {dest.parent} is not writable, so "
                           f"it cannot be downloaded from {url}; download it yourself or use "
                           f"another data directory (data_dir=... or ${DATA_DIR_ENV}).")
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
      total = response.headers.get("Content-Length")
      received = 0
      with tqdm.tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                     desc=f"Downloading {dest.name}", disable=None) as bar:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
          out.write(chunk)
          received += len(chunk)
          bar.update(len(chunk))
      if total and received != int(total):
        raise OSError(f"connection closed after {received} of {total} bytes")
    os.chmod(tmp, _FILE_MODE)
  except (urllib.error.URLError, OSError, ValueError) as e:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise MissingDataError(f"{dest} is missing and downloading it from {url} failed ({e}). "
                           f"If offline, copy the file into {dest.parent} yourself.") from e
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return pathlib.Path(tmp)


def save_npz(path: PathLike, **arrays: np.ndarray) -> None:
  """Writes a compressed ``.npz`` atomically (temporary file + ``os.replace``).

  Concurrent writers of the same cache file are safe: each writes its own temporary file and
  the last rename wins, so readers never see a partial file.
  """
  path = pathlib.Path(path)
  for value in arrays.values():
    if np.asarray(value).dtype == object:
      raise TypeError(f"{path}: refusing to save an object array (would need pickle)")
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez_compressed(f, **arrays)
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
