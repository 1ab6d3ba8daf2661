"""Data sets for examples, tests and benchmarks.

Everything here returns plain NumPy arrays: images are NHWC float32 in [0, 1]
(the layout the layers expect) and labels are int64 class ids (use
:func:`to_categorical` for one-hot targets).

* :func:`read_idx` reads the IDX format used by MNIST and Fashion-MNIST.
* :func:`load_mnist` / :func:`load_fashion_mnist` find the four IDX files (see
  :func:`_find_dataset_dir` for the look-up order) and download them once into
  a per-user cache, with SHA-256 checks, when nothing local is found.
* :func:`load_digits` wraps scikit-learn's bundled 8x8 digits (optional).
* :func:`make_xor`, :func:`make_spirals`, :func:`make_blobs` are small seeded
  synthetic problems.

This module depends only on the standard library and NumPy (scikit-learn is
imported lazily by :func:`load_digits`), so it can be used and tested without
the compiled part of retroprop.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetNotFoundError",
    "ChecksumError",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_digits",
    "make_xor",
    "make_spirals",
    "make_blobs",
    "to_categorical",
]


class DatasetNotFoundError(FileNotFoundError):
    """The data files could not be found locally nor downloaded.

    The message says where we looked and lists the ways to provide the data.
    """


class ChecksumError(ValueError):
    """A downloaded file did not match its published checksum."""


# ---------------------------------------------------------------------------
# IDX reader
# ---------------------------------------------------------------------------

# IDX type codes (third byte of the magic number) -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


#: What read_idx may allocate for a payload unless ``max_bytes`` says
#: otherwise: MNIST's training images take 47 MB.
IDX_MAX_BYTES = 1024**3
# Deflate expands at most ~1032-fold: a gzip file whose header promises more
# than this many times its own size cannot hold that payload (refused
# before anything is inflated).
_DEFLATE_MAX_RATIO = 1100


def read_idx(path, max_bytes=IDX_MAX_BYTES):
    """Read an IDX file (raw or gzip-compressed) into a NumPy array.

    The IDX format: two zero bytes, a type code byte, a dimension-count byte,
    then one big-endian uint32 per dimension, then the items in C order,
    big-endian. Compression is detected by the gzip magic bytes (1f 8b), not
    by the file name, so a misnamed file still reads correctly.

    Returns an array in native byte order with the shape from the header
    (uint8 for MNIST images and labels).

    Raises ``ValueError`` (naming the file) for anything malformed: a bad
    magic number, an unknown type code, a dimension count outside 1..4, a
    payload shorter or longer than the header promises, or a corrupt gzip
    stream; and, before anything is inflated or allocated, a payload larger
    than ``max_bytes`` (IDX_MAX_BYTES, 1 GiB) or than the compressed file
    could inflate to. The payload is read in chunks straight into the array.
    A file that cannot be opened raises the usual ``OSError``.
    """
    path = os.fspath(path)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
            or max_bytes < 0:
        raise ValueError(f"read_idx: max_bytes must be an integer >= 0, got {max_bytes!r}")
    # Opening is outside the try below: "no such file" / "permission denied"
    # must stay OSErrors, only problems with the *content* become ValueError.
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            return _parse_idx(raw, path, max_bytes, None)
        file_size = os.fstat(raw.fileno()).st_size
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _parse_idx(stream, path, max_bytes, file_size * _DEFLATE_MAX_RATIO)
        except (OSError, EOFError, zlib.error) as exc:
            # gzip reports a truncated stream as EOFError, a bad header or CRC
            # as BadGzipFile (an OSError) and broken deflate data as zlib.error.
            raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc


def _parse_idx(stream, path, max_bytes, inflate_bound):
    """Parse the IDX header and payload from an open binary stream."""
    head = stream.read(4)
    if len(head) < 4:
        raise ValueError(
            f"{path}: not an IDX file: {len(head)} bytes, too short for the 4-byte magic number"
        )
    if head[0] != 0 or head[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file: bad magic number 0x{head.hex()} "
            f"(the first two bytes must be zero)"
        )
    type_code, ndim = head[2], head[3]
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02X} (known: {known})")
    if not 1 <= ndim <= 4:
        raise ValueError(f"{path}: unsupported IDX dimension count {ndim} (expected 1 to 4)")

    dims_bytes = stream.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ValueError(
            f"{path}: truncated IDX header: expected {4 * ndim} bytes of dimensions, "
            f"got {len(dims_bytes)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
    dtype = _IDX_DTYPES[type_code]
    # math.prod on Python ints: a corrupt header (say four dimensions of
    # 2**32 - 1) must give a huge number, not a silently wrapped int64.
    expected = math.prod(shape) * dtype.itemsize
    if expected > max_bytes:
        raise ValueError(f"{path}: the IDX header declares {expected} bytes of data "
                         f"(shape {shape}), more than max_bytes={max_bytes}; pass a larger "
                         f"max_bytes to read_idx if the file is trusted")
    if inflate_bound is not None and expected > inflate_bound:
        raise ValueError(f"{path}: the IDX header declares {expected} bytes of data "
                         f"(shape {shape}), more than its compressed file can hold")

    # Straight into the array, a chunk at a time: memory follows the data
    # actually present, and there is no second copy.
    payload = np.empty(expected, dtype=np.uint8)
    got = _read_into(stream, payload)
    if got != expected or stream.read(1):
        got = f"{got} (file truncated)" if got != expected else \
            f"more than {expected} (trailing data after the payload)"
        raise ValueError(
            f"{path}: IDX payload size mismatch for shape {shape} of {dtype.name}: "
            f"expected {expected} bytes, got {got}"
        )
    items = payload.view(dtype)
    if dtype.itemsize > 1 and dtype.byteorder != "=" and not dtype.isnative:
        items.byteswap(inplace=True)
    return items.view(dtype.newbyteorder("=")).reshape(shape)


def _read_into(stream, buffer, chunk_size=1 << 22):
    """Fill ``buffer`` (a uint8 array) from ``stream`` in chunks; returns the
    bytes read (fewer at the end of the stream).

    Chunks matter because ``read(n)`` may allocate ``n`` bytes up front, and
    ``n`` comes from a header that may be corrupt; this way memory use is
    bounded by the data actually present.
    """
    filled, total = 0, buffer.size
    view = memoryview(buffer)
    while filled < total:
        chunk = stream.read(min(total - filled, chunk_size))
        if not chunk:
            break
        view[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    return filled


# ---------------------------------------------------------------------------
# Where MNIST-style data sets live
# ---------------------------------------------------------------------------

#: Environment variable naming a data root: ``$RETROPROP_DATA/<name>`` or the
#: directory itself is searched.
DATA_ENV_VAR = "RETROPROP_DATA"

#: System-wide locations (the Debian package ``dataset-fashion-mnist``
#: installs the four .gz files in the Fashion-MNIST one). Tests monkeypatch this.
SYSTEM_DATA_DIRS = {
    "mnist": "/usr/share/datasets/mnist",
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
}

#: Base URLs tried in order for downloads; a file is fetched as base + file name.
#: HTTPS first; the checksums below protect the plain-HTTP mirrors as well.
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        # The official (Zalando) mirror; HTTP only.
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

#: Expected digests per downloaded file, as hex strings:
#:   "sha256":         SHA-256 of the .gz file exactly as the mirrors serve it
#:                     (the widely published values for the upstream files);
#:   "content_sha256": SHA-256 of the *decompressed* IDX bytes, or None.
#: Why two: the .gz files in Debian's dataset-fashion-mnist hold the same data
#: as upstream, but their gzip headers were rewritten (no stored file name, a
#: different mtime), so their bytes - and SHA-256 - differ from the mirrors'.
#: A file passes if either digest matches; the content digests for
#: Fashion-MNIST were computed from the Debian files. For MNIST no content
#: digest is recorded (no trusted local copy was available to compute it).
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": {
            "sha256": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "content_sha256": None,
        },
        "train-labels-idx1-ubyte.gz": {
            "sha256": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "content_sha256": None,
        },
        "t10k-images-idx3-ubyte.gz": {
            "sha256": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "content_sha256": None,
        },
        "t10k-labels-idx1-ubyte.gz": {
            "sha256": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "content_sha256": None,
        },
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": {
            "sha256": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
            "content_sha256": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        },
        "train-labels-idx1-ubyte.gz": {
            "sha256": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
            "content_sha256": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        },
        "t10k-images-idx3-ubyte.gz": {
            "sha256": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
            "content_sha256": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        },
        "t10k-labels-idx1-ubyte.gz": {
            "sha256": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
            "content_sha256": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    },
}

_DISPLAY_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}

# The four files of an MNIST-style data set, without extension.
_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_DOWNLOAD_TIMEOUT_S = 60


def _candidate_names(stem):
    """File names accepted for one of the four files, in preference order."""
    # The .gz name is what every mirror and the Debian package use; the bare
    # name is what gunzip leaves behind; the dotted form ("train-images.idx3-
    # ubyte") is how several popular re-distributions spell it.
    dotted = stem.replace("-idx", ".idx", 1)
    return (stem + ".gz", stem, dotted)


def _find_file(directory, stem):
    """Return the path of ``stem`` in ``directory`` (any accepted name), or None."""
    for filename in _candidate_names(stem):
        path = Path(directory) / filename
        if path.is_file():
            return path
    return None


def _missing_files(directory):
    """The stems of the four files that ``directory`` does not hold."""
    return [stem for stem in _STEMS if _find_file(directory, stem) is None]


def _cache_root():
    """The per-user cache root: ``$XDG_CACHE_HOME/retroprop`` or ``~/.cache/retroprop``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative values must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "retroprop"


def _cache_dir(name):
    return _cache_root() / name


def _check_name(name):
    if name not in SYSTEM_DATA_DIRS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(SYSTEM_DATA_DIRS)}")


def _find_dataset_dir(name, data_dir=None, download=True):
    """Return the directory holding the four IDX files of data set ``name``.

    Look-up order (the first directory holding all four files wins):

    1. ``data_dir`` when given. If files are missing there this is an error:
       an explicit directory never falls through to other places, so a typo
       cannot silently load a different copy.
    2. ``$RETROPROP_DATA/<name>``, then ``$RETROPROP_DATA`` itself.
    3. The system location ``SYSTEM_DATA_DIRS[name]``.
    4. The user cache ``_cache_dir(name)`` (``$XDG_CACHE_HOME/retroprop/<name>``
       or ``~/.cache/retroprop/<name>``).
    5. If ``download`` is true: download the missing files from ``MIRRORS``
       into the cache, verify them against ``CHECKSUMS``, and return the cache.

    Raises :class:`DatasetNotFoundError` listing where it looked and the ways
    to provide the data, or :class:`ChecksumError` when downloads arrived but
    none matched the published checksums.
    """
    _check_name(name)
    display = _DISPLAY_NAMES[name]

    if data_dir is not None:
        directory = Path(os.fspath(data_dir)).expanduser()
        if not directory.is_dir():
            raise DatasetNotFoundError(f"{display}: data_dir {str(directory)!r} is not a directory")
        missing = _missing_files(directory)
        if missing:
            raise DatasetNotFoundError(
                f"{display}: data_dir {str(directory)!r} lacks "
                + ", ".join(f"{stem}[.gz]" for stem in missing)
            )
        return directory

    # Ordered (description, directory) pairs; a None directory is reported
    # in the error message but not searched.
    candidates = []
    env_root = os.environ.get(DATA_ENV_VAR, "")
    if env_root:
        root = Path(env_root).expanduser()
        candidates.append((f"${DATA_ENV_VAR}/{name}", root / name))
        # The root itself is accepted for a directory holding one data set.
        # Note MNIST and Fashion-MNIST use the same file names, so prefer the
        # <name> subdirectories when both live under one root.
        candidates.append((f"${DATA_ENV_VAR}", root))
    else:
        candidates.append((f"${DATA_ENV_VAR}", None))
    candidates.append(("system location", Path(SYSTEM_DATA_DIRS[name])))
    cache = _cache_dir(name)
    candidates.append(("user cache", cache))

    looked = []
    for description, directory in candidates:
        if directory is None:
            looked.append(f"{description}: not set")
            continue
        if not directory.is_dir():
            looked.append(f"{description}: {directory} (no such directory)")
            continue
        missing = _missing_files(directory)
        if not missing:
            return directory
        looked.append(f"{description}: {directory} (missing {', '.join(missing)})")

    download_note = "download: disabled (download=False)"
    if download:
        try:
            for stem in _missing_files(cache) if cache.is_dir() else _STEMS:
                _download_file(name, stem + ".gz", cache)
            return cache
        except ChecksumError:
            raise
        except OSError as exc:
            # Network unreachable, HTTP errors and an unwritable cache all land
            # here; the message below keeps the reason.
            download_note = f"download into {cache} failed:\n      {exc}"

    raise DatasetNotFoundError(_not_found_message(name, looked, download_note))


def _not_found_message(name, looked, download_note):
    display = _DISPLAY_NAMES[name]
    files = ", ".join(stem + "[.gz]" for stem in _STEMS)
    if name == "fashion-mnist":
        system_hint = (
            "install the Debian/Ubuntu package: apt-get install dataset-fashion-mnist "
            f"(it installs them in {SYSTEM_DATA_DIRS[name]})"
        )
    else:
        system_hint = f"copy the four files into {SYSTEM_DATA_DIRS[name]}"
    lines = [
        f"could not find the {display} data set (files {files}).",
        "Looked in:",
        *(f"  - {entry}" for entry in looked),
        f"  - {download_note}",
        "Ways to provide it:",
        "  - pass data_dir='/path/to/dir' holding the four files",
        f"  - set {DATA_ENV_VAR}=/path so that ${DATA_ENV_VAR}/{name} holds them",
        f"  - {system_hint}",
        f"  - allow network access (download=True) to fetch them once into {_cache_dir(name)}",
    ]
    return "\n".join(lines)


def _urlopen(url, timeout):
    """Open ``url`` for reading; a separate function so tests can replace it."""
    return urllib.request.urlopen(url, timeout=timeout)


def _verify(path, expected):
    """Check a downloaded file against ``expected`` digests; return a problem or None."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    got = digest.hexdigest()
    if expected.get("sha256") == got:
        return None
    problem = f"sha256 {got}, expected {expected.get('sha256')}"
    content_expected = expected.get("content_sha256")
    if content_expected:
        # A mirror may serve the same data recompressed (different gzip
        # header); accept it when the decompressed bytes match.
        content = hashlib.sha256()
        try:
            with gzip.open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    content.update(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            return f"{problem}; not a valid gzip file ({exc})"
        if content.hexdigest() == content_expected:
            return None
        problem += f"; decompressed sha256 {content.hexdigest()}, expected {content_expected}"
    if not expected.get("sha256") and not content_expected:
        # No digest recorded: fall back to checking the file is a whole IDX
        # file (magic number and exact size), which catches HTML error pages
        # and truncated transfers but not deliberate tampering.
        try:
            read_idx(path)
        except ValueError as exc:
            return str(exc)
        return None
    return problem


def _download_file(name, filename, dest_dir):
    """Download ``filename`` of data set ``name`` into ``dest_dir``, verified.

    Mirrors are tried in order. Each attempt streams into a temporary file in
    ``dest_dir`` (same file system, so the final rename is atomic), fsyncs it,
    verifies the checksum, and only then ``os.replace``-s it into place: an
    interrupted or corrupt download never leaves a file under the real name,
    and concurrent downloads cannot see each other's partial files.

    Raises :class:`ChecksumError` if some mirror delivered the file but no
    copy matched, or ``OSError`` if no mirror could be reached.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    expected = CHECKSUMS[name].get(filename, {})
    failures, checksum_failures = [], []
    for base in MIRRORS[name]:
        url = base + filename
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                with _urlopen(url, _DOWNLOAD_TIMEOUT_S) as response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            problem = _verify(tmp_name, expected)
            if problem is not None:
                checksum_failures.append(f"{url}: checksum mismatch: {problem}")
                continue  # the finally clause removes the temporary file
            os.replace(tmp_name, dest_dir / filename)
            _fsync_dir(dest_dir)
            return dest_dir / filename
        except OSError as exc:  # URLError and HTTPError are OSErrors
            failures.append(f"{url}: {exc}")
        finally:
            # Also runs on KeyboardInterrupt; after a successful os.replace
            # the temporary name no longer exists.
            if os.path.exists(tmp_name):
                os.remove(tmp_name)
    if checksum_failures:
        raise ChecksumError(
            f"{_DISPLAY_NAMES[name]}: no download of {filename} matched its checksum "
            f"(nothing was written to {dest_dir}):\n  "
            + "\n  ".join(checksum_failures + failures)
        )
    raise OSError(f"could not download {filename}:\n      " + "\n      ".join(failures))


def _fsync_dir(directory):
    """Make a rename durable by syncing its directory (best effort, POSIX only)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems and platforms cannot fsync directories
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# MNIST and Fashion-MNIST
# ---------------------------------------------------------------------------


def _load_split(images_path, labels_path):
    """Read and check one (images, labels) pair; return (float32 NHWC, int64)."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype.name} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path}: expected a 1-D uint8 label array, got {labels.dtype.name} "
            f"{labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    # Divide in place on the float copy: one 4-byte-per-pixel allocation.
    x = images.reshape(images.shape + (1,)).astype(np.float32)
    x /= np.float32(255.0)
    return x, labels.astype(np.int64)


def _load_mnist_like(name, data_dir, download):
    directory = _find_dataset_dir(name, data_dir, download=download)
    paths = {stem: _find_file(directory, stem) for stem in _STEMS}
    train = _load_split(paths["train-images-idx3-ubyte"], paths["train-labels-idx1-ubyte"])
    test = _load_split(paths["t10k-images-idx3-ubyte"], paths["t10k-labels-idx1-ubyte"])
    # No in-memory cache: the float arrays take ~220 MB, and handing the same
    # mutable arrays to every caller would let one caller's in-place edit
    # leak into the next; re-reading the .gz files takes about a second.
    return train, test


def load_mnist(data_dir=None, *, download=True):
    """Load MNIST handwritten digits.

    Returns ``(x_train, y_train), (x_test, y_test)``: images float32 in
    [0, 1] of shape (N, 28, 28, 1) (60000 train, 10000 test), labels int64
    of shape (N,) in 0..9.

    The four IDX files (``train-images-idx3-ubyte[.gz]``, ...) are looked up
    as described in :func:`_find_dataset_dir`: ``data_dir``, then
    ``$RETROPROP_DATA/mnist`` and ``$RETROPROP_DATA``, then
    ``/usr/share/datasets/mnist``, then ``~/.cache/retroprop/mnist``, then
    (unless ``download=False``) a verified download into that cache.
    """
    return _load_mnist_like("mnist", data_dir, download)


def load_fashion_mnist(data_dir=None, *, download=True):
    """Load Fashion-MNIST (Zalando's 28x28 grey-scale clothing images, 10 classes).

    Same return values and look-up order as :func:`load_mnist`, with
    ``fashion-mnist`` as the directory name and
    ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``) as the system location.
    """
    return _load_mnist_like("fashion-mnist", data_dir, download)


# ---------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------


def load_digits(test_fraction=0.2, seed=0):
    """Load scikit-learn's bundled 8x8 handwritten digits (1797 images).

    Returns ``(x_train, y_train), (x_test, y_test)`` with images float32 in
    [0, 1] of shape (N, 8, 8, 1) and int64 labels, split by a seeded random
    permutation (``test_fraction`` of the images go to the test set), so the
    split is the same on every call with the same ``seed``.

    Needs scikit-learn (``pip install scikit-learn``), which ships the data
    inside the package - no download.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:
        raise ImportError(
            "retroprop.datasets.load_digits needs scikit-learn, which is not installed: "
            "pip install scikit-learn  (or: pip install 'retroprop[datasets]')"
        ) from exc
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits: test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sk_load_digits()
    # Pixel values are integers 0..16 in this data set.
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).reshape(-1, 8, 8, 1)
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test_idx, train_idx = order[:n_test], order[n_test:]
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


# ---------------------------------------------------------------------------
# Synthetic problems
# ---------------------------------------------------------------------------


def _check_int(fn, arg, value, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {arg} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{fn}: {arg} must be >= {minimum}, got {value}")
    return int(value)


def _check_nonneg(fn, arg, value):
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{fn}: {arg} must be a finite number >= 0, got {value}")
    return value


def _balanced_labels(n_samples, n_classes):
    """n_samples labels with class sizes differing by at most one (low ids first)."""
    return np.arange(n_samples, dtype=np.int64) % n_classes


def make_xor(n=None, noise=0.0, seed=None):
    """The XOR problem: points near the corners of the unit square.

    With ``n=None`` returns the four classic points (0,0), (0,1), (1,0),
    (1,1) with labels 0, 1, 1, 0. With an int ``n`` returns ``n`` points
    spread evenly over the four corners, in shuffled order. Gaussian noise of
    standard deviation ``noise`` is added to the coordinates (labels come from
    the corner, before noise).

    Returns ``(x, y)``: x float32 (n, 2), y int64 (n,).
    """
    noise = _check_nonneg("make_xor", "noise", noise)
    rng = np.random.default_rng(seed)
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    if n is None:
        corner_ids = np.arange(4)
    else:
        n = _check_int("make_xor", "n", n, 1)
        corner_ids = rng.permutation(_balanced_labels(n, 4))
    x = corners[corner_ids]
    y = (x[:, 0] != x[:, 1]).astype(np.int64)
    if noise > 0:
        x = x + rng.normal(0.0, noise, size=x.shape)
    return x.astype(np.float32), y


def make_spirals(n_samples=200, n_classes=2, noise=0.1, seed=None):
    """Interleaved spiral arms in the plane, one arm per class.

    Each arm turns 1.5 times around the origin from radius ~0 to 1; arms are
    rotated by 2*pi/n_classes from each other. Gaussian noise of standard
    deviation ``noise`` is added to the coordinates. Classes differ in size by
    at most one; the samples are shuffled.

    Returns ``(x, y)``: x float32 (n_samples, 2), y int64 (n_samples,).
    """
    n_samples = _check_int("make_spirals", "n_samples", n_samples, 1)
    n_classes = _check_int("make_spirals", "n_classes", n_classes, 1)
    noise = _check_nonneg("make_spirals", "noise", noise)
    if n_samples < n_classes:
        raise ValueError(
            f"make_spirals: n_samples ({n_samples}) must be >= n_classes ({n_classes})"
        )
    rng = np.random.default_rng(seed)
    y = _balanced_labels(n_samples, n_classes)
    # Position along the arm, evenly spaced per class so every arm is covered.
    t = np.empty(n_samples)
    for k in range(n_classes):
        members = y == k
        t[members] = np.linspace(0.05, 1.0, members.sum())
    angle = 3.0 * np.pi * t + 2.0 * np.pi * y / n_classes
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    if noise > 0:
        x = x + rng.normal(0.0, noise, size=x.shape)
    order = rng.permutation(n_samples)
    return x[order].astype(np.float32), y[order]


def make_blobs(n_samples=300, n_classes=3, n_features=2, spread=1.0, seed=None):
    """Isotropic Gaussian clusters, one per class.

    Cluster centres are drawn uniformly from [-10, 10] in each feature;
    points have standard deviation ``spread`` around their centre. Classes
    differ in size by at most one; the samples are shuffled.

    Returns ``(x, y)``: x float32 (n_samples, n_features), y int64 (n_samples,).
    """
    n_samples = _check_int("make_blobs", "n_samples", n_samples, 1)
    n_classes = _check_int("make_blobs", "n_classes", n_classes, 1)
    n_features = _check_int("make_blobs", "n_features", n_features, 1)
    spread = _check_nonneg("make_blobs", "spread", spread)
    if n_samples < n_classes:
        raise ValueError(f"make_blobs: n_samples ({n_samples}) must be >= n_classes ({n_classes})")
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10.0, 10.0, size=(n_classes, n_features))
    y = rng.permutation(_balanced_labels(n_samples, n_classes))
    x = centres[y] + rng.normal(0.0, spread, size=(n_samples, n_features))
    return x.astype(np.float32), y


# ---------------------------------------------------------------------------
# Label helpers
# ---------------------------------------------------------------------------


def to_categorical(y, num_classes=None):
    """One-hot encode integer class ids.

    ``y`` is any array-like of non-negative integers (floats are accepted if
    they hold whole numbers); the result is float32 of shape
    ``y.shape + (num_classes,)``. ``num_classes`` defaults to ``max(y) + 1``.
    """
    y = np.asarray(y)
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating):
            raise TypeError(f"to_categorical: y must hold integers, got dtype {y.dtype}")
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("to_categorical: y must hold whole numbers (class ids)")
    ids = y.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"to_categorical: class ids must be >= 0, found {int(ids.min())}")
    if num_classes is None:
        if ids.size == 0:
            raise ValueError("to_categorical: num_classes is required when y is empty")
        num_classes = int(ids.max()) + 1
    else:
        num_classes = _check_int("to_categorical", "num_classes", num_classes, 1)
        if ids.size and ids.max() >= num_classes:
            raise ValueError(
                f"to_categorical: class id {int(ids.max())} out of range for "
                f"num_classes={num_classes}"
            )
    out = np.zeros(ids.shape + (num_classes,), dtype=np.float32)
    # Put a 1 at (index..., ids[index]) for every position in y.
    np.put_along_axis(out, ids[..., None], 1.0, axis=-1)
    return out
