"""Tests for retroprop.datasets: IDX reading, data set look-up and download,
the real Fashion-MNIST files (when installed), scikit-learn digits and the
synthetic generators.

Every file these tests read is written by the tests themselves into
``tmp_path``, except the optional real-data checks against the Debian
package ``dataset-fashion-mnist``. Nothing touches the network: downloads are
exercised with ``file://`` mirror URLs.
"""

import gzip
import hashlib
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from retroprop import datasets

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# numpy dtype -> IDX type code, written independently of the module's table.
TYPE_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def idx_bytes(array):
    """Encode ``array`` as IDX: 0, 0, type code, ndim, big-endian dims, big-endian items."""
    array = np.asarray(array)
    code = TYPE_CODES[array.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_file(path, data, compress=False):
    path = Path(path)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_mnist_dir(directory, n_train=12, n_test=5, compress=True, naming="dash", seed=0):
    """Write a tiny MNIST-style data set; return the uint8 arrays written."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for stem, array in arrays.items():
        name = stem if naming == "dash" else stem.replace("-idx", ".idx")
        if compress:
            name += ".gz"
        write_file(directory / name, idx_bytes(array), compress=compress)
    return arrays


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point every look-up location into tmp_path and make downloads impossible.

    Returns a namespace-like dict of the directories a test may populate.
    """
    system = {name: tmp_path / "system" / name for name in ("mnist", "fashion-mnist")}
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIRS", {k: str(v) for k, v in system.items()})
    monkeypatch.delenv("RETROPROP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    empty_mirror = tmp_path / "no-mirror"
    empty_mirror.mkdir()
    monkeypatch.setattr(
        datasets,
        "MIRRORS",
        {name: [empty_mirror.as_uri() + "/"] for name in ("mnist", "fashion-mnist")},
    )
    return {
        "root": tmp_path,
        "system": system,
        "cache": tmp_path / "xdg-cache" / "retroprop",
        "mirror": empty_mirror,
    }


# ---------------------------------------------------------------------------
# read_idx: round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(
    "dtype,shape",
    [
        (np.uint8, (7,)),
        (np.int8, (3, 4)),
        (np.int16, (2, 3, 4)),
        (np.int32, (2, 1, 3, 2)),
        (np.float32, (5, 3)),
        (np.float64, (4,)),
        (np.uint8, (0, 28, 28)),  # an empty data set is still well-formed
    ],
)
def test_read_idx_round_trip(tmp_path, dtype, shape, compress):
    rng = np.random.default_rng(1)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal(shape).astype(dtype)
    path = write_file(tmp_path / "data.idx", idx_bytes(array), compress=compress)

    got = datasets.read_idx(path)

    assert got.dtype == np.dtype(dtype)  # native byte order, not '>'
    assert got.dtype.isnative
    assert got.shape == shape
    np.testing.assert_array_equal(got, array)
    assert got.flags.writeable


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_raw = write_file(tmp_path / "raw-but-named.gz", idx_bytes(array))
    raw_named_gz = write_file(tmp_path / "gzip-but-named.idx", idx_bytes(array), compress=True)
    np.testing.assert_array_equal(datasets.read_idx(gz_named_raw), array)
    np.testing.assert_array_equal(datasets.read_idx(str(raw_named_gz)), array)


def test_read_idx_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.read_idx(tmp_path / "nope.idx")


# ---------------------------------------------------------------------------
# read_idx: corrupt files
# ---------------------------------------------------------------------------

GOOD = idx_bytes(np.arange(24, dtype=np.int16).reshape(2, 3, 4))  # payload 48 bytes


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(
    "data,needle",
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (b"\x01\x00" + GOOD[2:], "bad magic"),
        (b"\x00\x07" + GOOD[2:], "bad magic"),
        (b"\x00\x00\x0a\x01" + GOOD[4:], "unknown IDX type code 0x0A"),
        (b"\x00\x00\x08\x00" + GOOD[4:], "dimension count 0"),
        (b"\x00\x00\x08\x05" + b"\x00\x00\x00\x01" * 5 + b"x", "dimension count 5"),
        (GOOD[:10], "truncated IDX header"),
        (GOOD[:-1], "expected 48 bytes, got 47"),
        (GOOD[:16], "expected 48 bytes, got 0"),
        (GOOD + b"\x00", "trailing data"),
        (GOOD + b"extra bytes here", "trailing data"),
        # Header promising 4 * (2**32 - 1)**4 bytes: must be a clean error,
        # not an overflow, a MemoryError or a giant allocation (refused
        # against the limit before any payload is read).
        (b"\x00\x00\x0c\x04" + b"\xff\xff\xff\xff" * 4 + b"abc", "max_bytes"),
    ],
)
def test_read_idx_rejects_malformed(tmp_path, data, needle, compress):
    path = write_file(tmp_path / "bad-file.idx", data, compress=compress)
    with pytest.raises(ValueError) as excinfo:
        datasets.read_idx(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert needle in message


def test_read_idx_size_message_says_expected_and_got(tmp_path):
    path = write_file(tmp_path / "short.idx", GOOD[:-5])
    with pytest.raises(ValueError, match=r"expected 48 bytes, got 43 \(file truncated\)"):
        datasets.read_idx(path)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda z: z[: len(z) // 2],  # stream cut in the middle
        lambda z: z[:-4],  # trailer cut (missing size field)
        lambda z: z[:12] + bytes(b ^ 0xFF for b in z[12:20]) + z[20:],  # flipped deflate bits
        lambda z: z[:-8] + b"\x00\x00\x00\x00" + z[-4:],  # wrong CRC
        lambda z: z[:3],  # just the magic and a little more
        lambda z: z + b"garbage",  # junk after the gzip member
    ],
    ids=["half", "no-trailer", "flipped", "bad-crc", "header-only", "junk-after"],
)
def test_read_idx_corrupt_gzip(tmp_path, mangle):
    payload = idx_bytes(np.arange(4000, dtype=np.int32))
    compressed = gzip.compress(payload)
    path = tmp_path / "broken.idx.gz"
    path.write_bytes(mangle(compressed))
    with pytest.raises(ValueError) as excinfo:
        datasets.read_idx(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "corrupt gzip stream" in message


# ---------------------------------------------------------------------------
# load_mnist / load_fashion_mnist on small files written here
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compress,naming", [(True, "dash"), (False, "dash"), (False, "dot")], ids=["gz", "raw", "dot"]
)
def test_load_mnist_from_data_dir(isolated, tmp_path, compress, naming):
    arrays = write_mnist_dir(tmp_path / "mine", compress=compress, naming=naming)
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist(tmp_path / "mine", download=False)

    assert x_train.shape == (12, 28, 28, 1) and x_test.shape == (5, 28, 28, 1)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert y_train.shape == (12,) and y_test.shape == (5,)
    expected = arrays["train-images-idx3-ubyte"].astype(np.float32)[..., None] / 255
    np.testing.assert_allclose(x_train, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0


def test_load_fashion_mnist_from_data_dir_accepts_mixed_names(isolated, tmp_path):
    directory = tmp_path / "mixed"
    arrays = write_mnist_dir(directory, compress=True)
    # Decompress one file, as a user running gunzip on just one of them would.
    gz = directory / "t10k-images-idx3-ubyte.gz"
    (directory / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    (_, _), (x_test, _) = datasets.load_fashion_mnist(str(directory), download=False)
    np.testing.assert_array_equal(
        np.round(x_test[..., 0] * 255).astype(np.uint8), arrays["t10k-images-idx3-ubyte"]
    )


def test_load_mnist_count_mismatch(isolated, tmp_path):
    directory = tmp_path / "d"
    write_mnist_dir(directory)
    labels = np.zeros(11, dtype=np.uint8)  # 12 images, 11 labels
    write_file(directory / "train-labels-idx1-ubyte.gz", idx_bytes(labels), compress=True)
    with pytest.raises(ValueError, match="12 images .* 11 labels"):
        datasets.load_mnist(directory, download=False)


def test_load_mnist_label_out_of_range(isolated, tmp_path):
    directory = tmp_path / "d"
    write_mnist_dir(directory)
    labels = np.full(5, 10, dtype=np.uint8)
    path = write_file(directory / "t10k-labels-idx1-ubyte.gz", idx_bytes(labels), compress=True)
    with pytest.raises(ValueError, match="labels must be 0..9") as excinfo:
        datasets.load_mnist(directory, download=False)
    assert str(path) in str(excinfo.value)


def test_load_mnist_wrong_image_shape(isolated, tmp_path):
    directory = tmp_path / "d"
    write_mnist_dir(directory)
    write_file(
        directory / "train-images-idx3-ubyte.gz",
        idx_bytes(np.zeros((12, 32, 32), dtype=np.uint8)),
        compress=True,
    )
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        datasets.load_mnist(directory, download=False)


def test_load_mnist_corrupt_file_propagates_value_error(isolated, tmp_path):
    directory = tmp_path / "d"
    write_mnist_dir(directory)
    target = directory / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-30])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        datasets.load_mnist(directory, download=False)


# ---------------------------------------------------------------------------
# Look-up order
# ---------------------------------------------------------------------------


def test_lookup_order(isolated, monkeypatch, tmp_path):
    name = "fashion-mnist"
    env_root = tmp_path / "env-root"
    explicit = tmp_path / "explicit"
    cache = isolated["cache"] / name
    # Populate every location, then remove them one at a time from the front.
    for directory in (explicit, env_root / name, env_root, isolated["system"][name], cache):
        write_mnist_dir(directory)
    monkeypatch.setenv("RETROPROP_DATA", str(env_root))

    def find():
        return datasets._find_dataset_dir(name, None, download=False)

    assert datasets._find_dataset_dir(name, explicit, download=False) == explicit
    assert find() == env_root / name
    (env_root / name / "train-images-idx3-ubyte.gz").unlink()  # incomplete: skipped
    assert find() == env_root
    monkeypatch.delenv("RETROPROP_DATA")
    assert find() == isolated["system"][name]
    monkeypatch.setenv("RETROPROP_DATA", "")  # empty means unset
    assert find() == isolated["system"][name]
    (isolated["system"][name] / "t10k-labels-idx1-ubyte.gz").unlink()
    assert find() == cache
    (cache / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(datasets.DatasetNotFoundError):
        find()


def test_data_dir_never_falls_through(isolated, tmp_path):
    write_mnist_dir(isolated["system"]["mnist"])  # a complete copy exists elsewhere
    partial = tmp_path / "partial"
    write_mnist_dir(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(datasets.DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets._find_dataset_dir("mnist", partial)
    with pytest.raises(datasets.DatasetNotFoundError, match="not a directory"):
        datasets.load_mnist(tmp_path / "does-not-exist")


def test_cache_dir_respects_xdg_and_home(isolated, monkeypatch, tmp_path):
    assert datasets._cache_dir("mnist") == isolated["cache"] / "mnist"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored per the XDG spec
    assert datasets._cache_dir("mnist") == tmp_path / "home" / ".cache" / "retroprop" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datasets._cache_dir("mnist") == tmp_path / "home" / ".cache" / "retroprop" / "mnist"


def test_nothing_found_lists_the_options(isolated):
    with pytest.raises(datasets.DatasetNotFoundError) as excinfo:
        datasets.load_fashion_mnist(download=False)
    error = excinfo.value
    assert isinstance(error, FileNotFoundError) and isinstance(error, OSError)
    message = str(error)
    for needle in (
        "Fashion-MNIST",
        "data_dir=",
        "RETROPROP_DATA",
        "apt-get install dataset-fashion-mnist",
        "download=True",
        "disabled",
        isolated["system"]["fashion-mnist"].as_posix(),
        (isolated["cache"] / "fashion-mnist").as_posix(),
    ):
        assert needle in message, needle


def test_unknown_name_rejected():
    with pytest.raises(ValueError, match="unknown data set"):
        datasets._find_dataset_dir("cifar10", None, download=False)


# ---------------------------------------------------------------------------
# Downloads (file:// mirrors, no network)
# ---------------------------------------------------------------------------


@pytest.fixture
def mirror(isolated, monkeypatch):
    """A complete file:// mirror for "mnist" with checksums patched to match it."""
    directory = isolated["root"] / "mirror"
    arrays = write_mnist_dir(directory, compress=True)
    checksums = {
        stem + ".gz": {"sha256": sha256_file(directory / (stem + ".gz")), "content_sha256": None}
        for stem in STEMS
    }
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", checksums)
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [directory.as_uri() + "/"])
    return {"dir": directory, "arrays": arrays, "checksums": checksums}


def test_download_writes_verified_files_atomically(isolated, mirror, monkeypatch):
    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def spy_replace(src, dst):
        events.append(("replace", Path(src), Path(dst)))
        return real_replace(src, dst)

    def spy_fsync(fd):
        events.append(("fsync",))
        return real_fsync(fd)

    monkeypatch.setattr(datasets.os, "replace", spy_replace)
    monkeypatch.setattr(datasets.os, "fsync", spy_fsync)
    # The first mirror does not have the files: the second one must be used.
    monkeypatch.setitem(
        datasets.MIRRORS, "mnist", [isolated["mirror"].as_uri() + "/", mirror["dir"].as_uri() + "/"]
    )

    cache = isolated["cache"] / "mnist"
    assert datasets._find_dataset_dir("mnist") == cache

    replaces = [e for e in events if e[0] == "replace"]
    assert sorted(dst.name for _, _, dst in replaces) == sorted(s + ".gz" for s in STEMS)
    for _, src, dst in replaces:
        # Written under a hidden temporary name in the same directory, then renamed.
        assert src.parent == dst.parent == cache
        assert src.name.startswith(".") and src.name.endswith(".part")
    # Each file's data is fsynced before its rename (an fsync precedes every replace).
    kinds = [e[0] for e in events]
    for i, kind in enumerate(kinds):
        if kind == "replace":
            assert kinds[i - 1] == "fsync"
    for stem in STEMS:
        name = stem + ".gz"
        assert (cache / name).read_bytes() == (mirror["dir"] / name).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted(s + ".gz" for s in STEMS)

    # The cache is now found without downloading, and the data loads.
    (x_train, y_train), _ = datasets.load_mnist(download=False)
    np.testing.assert_array_equal(y_train, mirror["arrays"]["train-labels-idx1-ubyte"])


def test_download_fills_only_missing_files(isolated, mirror):
    cache = isolated["cache"] / "mnist"
    write_mnist_dir(cache, seed=99)
    (cache / "t10k-labels-idx1-ubyte.gz").unlink()
    kept = (cache / "train-images-idx3-ubyte.gz").read_bytes()
    datasets._find_dataset_dir("mnist")
    assert (cache / "train-images-idx3-ubyte.gz").read_bytes() == kept
    assert (cache / "t10k-labels-idx1-ubyte.gz").read_bytes() == (
        mirror["dir"] / "t10k-labels-idx1-ubyte.gz"
    ).read_bytes()


def test_download_checksum_mismatch_leaves_nothing(isolated, mirror, monkeypatch):
    bad = dict(mirror["checksums"])
    bad["train-images-idx3-ubyte.gz"] = {"sha256": "0" * 64, "content_sha256": None}
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", bad)
    with pytest.raises(datasets.ChecksumError) as excinfo:
        datasets.load_mnist()
    message = str(excinfo.value)
    assert "checksum mismatch" in message and "0" * 64 in message
    assert mirror["dir"].as_uri() in message
    cache = isolated["cache"] / "mnist"
    # No file under the real name and no leftover temporary file.
    assert list(cache.iterdir()) == []


def test_download_interrupted_leaves_nothing(isolated, mirror, monkeypatch):
    class Broken:
        def __init__(self):
            self.calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionResetError("connection reset by peer")
            return b"\x1f\x8b partial"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(datasets, "_urlopen", lambda url, timeout: Broken())
    with pytest.raises(datasets.DatasetNotFoundError, match="connection reset"):
        datasets.load_mnist()
    assert list((isolated["cache"] / "mnist").iterdir()) == []


def test_download_unreachable_reports_reasons(isolated):
    # `isolated` points the mirrors at an empty directory: every URL fails.
    with pytest.raises(datasets.DatasetNotFoundError) as excinfo:
        datasets.load_mnist()
    message = str(excinfo.value)
    assert "download into" in message and "failed" in message
    assert isolated["mirror"].as_uri() in message
    assert "data_dir=" in message


def test_download_accepts_recompressed_copy_by_content_digest(isolated, mirror, monkeypatch):
    # Same data, different gzip header (mtime): the file digest differs but
    # the content digest matches, as with Debian's repackaged Fashion-MNIST.
    name = "t10k-labels-idx1-ubyte.gz"
    content = gzip.decompress((mirror["dir"] / name).read_bytes())
    (mirror["dir"] / name).write_bytes(gzip.compress(content, mtime=12345))
    checksums = dict(mirror["checksums"])
    checksums[name] = {
        "sha256": checksums[name]["sha256"],  # the digest of the *other* compression
        "content_sha256": hashlib.sha256(content).hexdigest(),
    }
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", checksums)
    dest = isolated["root"] / "dest"
    assert datasets._download_file("mnist", name, dest) == dest / name

    checksums[name] = {"sha256": "1" * 64, "content_sha256": "2" * 64}
    dest2 = isolated["root"] / "dest2"
    with pytest.raises(datasets.ChecksumError, match="decompressed sha256"):
        datasets._download_file("mnist", name, dest2)
    assert list(dest2.iterdir()) == []


def test_download_without_digest_checks_structure(isolated, mirror, monkeypatch):
    # No recorded digest: an HTML error page served under the right name must
    # still be rejected (the IDX structure check), a real IDX file accepted.
    name = "train-labels-idx1-ubyte.gz"
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", {})
    assert datasets._download_file("mnist", name, isolated["root"] / "ok") is not None
    (mirror["dir"] / name).write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(datasets.ChecksumError, match="bad magic"):
        datasets._download_file("mnist", name, isolated["root"] / "bad")


# ---------------------------------------------------------------------------
# The real Fashion-MNIST files (Debian package dataset-fashion-mnist)
# ---------------------------------------------------------------------------

needs_fashion = pytest.mark.skipif(
    not all((FASHION_SYSTEM_DIR / (s + ".gz")).is_file() for s in STEMS),
    reason=f"Fashion-MNIST not installed in {FASHION_SYSTEM_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def fashion():
    return datasets.load_fashion_mnist(FASHION_SYSTEM_DIR, download=False)


@needs_fashion
def test_real_fashion_mnist(fashion):
    (x_train, y_train), (x_test, y_test) = fashion
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert 0.0 <= x_test.min() and x_test.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [1000] * 10)
    # Pixels are k/255 exactly as float32 division gives them.
    assert np.all(np.round(x_train[:100] * 255) / np.float32(255) == x_train[:100])


@needs_fashion
def test_real_fashion_found_at_system_location(monkeypatch, tmp_path):
    monkeypatch.delenv("RETROPROP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datasets._find_dataset_dir("fashion-mnist", download=False) == FASHION_SYSTEM_DIR


@needs_fashion
def test_real_fashion_content_digests_match_installed_files():
    # The hard-coded content digests are what lets a recompressed copy pass.
    for stem in STEMS:
        path = FASHION_SYSTEM_DIR / (stem + ".gz")
        digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        assert digest == datasets.CHECKSUMS["fashion-mnist"][stem + ".gz"]["content_sha256"]


@needs_fashion
def test_real_fashion_download_from_file_mirror(isolated, monkeypatch):
    # The real checksums, the real (Debian-compressed) files, a file:// mirror.
    monkeypatch.setitem(datasets.MIRRORS, "fashion-mnist", [FASHION_SYSTEM_DIR.as_uri() + "/"])
    dest = isolated["root"] / "dl"
    for name in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        datasets._download_file("fashion-mnist", name, dest)
        assert (dest / name).read_bytes() == (FASHION_SYSTEM_DIR / name).read_bytes()


# ---------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------


def test_load_digits():
    pytest.importorskip("sklearn", reason="scikit-learn not installed")
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    assert x_train.shape[1:] == (8, 8, 1) and x_test.shape[1:] == (8, 8, 1)
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == 359
    assert len(y_train) == len(x_train) and len(y_test) == len(x_test)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert set(np.unique(y_train)) == set(range(10))
    (x2, y2), _ = datasets.load_digits()
    np.testing.assert_array_equal(y2, y_train)  # deterministic split


def test_load_digits_without_sklearn(monkeypatch):
    # A None entry in sys.modules makes "import sklearn..." raise ImportError.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        datasets.load_digits()


# ---------------------------------------------------------------------------
# Synthetic generators
# ---------------------------------------------------------------------------


def test_make_xor_classic():
    x, y = datasets.make_xor()
    np.testing.assert_array_equal(x, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, [0, 1, 1, 0])
    assert x.dtype == np.float32 and y.dtype == np.int64


def test_make_xor_sampled():
    x, y = datasets.make_xor(n=101, noise=0.1, seed=3)
    assert x.shape == (101, 2) and y.shape == (101,)
    assert x.dtype == np.float32 and y.dtype == np.int64
    counts = np.bincount(y)
    assert abs(counts[0] - counts[1]) <= 2
    # Labels follow the nearest corner.
    corner = np.round(np.clip(x, 0, 1)).astype(int)
    assert np.mean((corner[:, 0] ^ corner[:, 1]) == y) > 0.95
    x2, y2 = datasets.make_xor(n=101, noise=0.1, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = datasets.make_xor(n=101, noise=0.1, seed=4)
    assert not np.array_equal(x, x3)


@pytest.mark.parametrize("n_samples,n_classes", [(200, 2), (301, 3), (10, 5)])
def test_make_spirals(n_samples, n_classes):
    x, y = datasets.make_spirals(n_samples, n_classes, noise=0.05, seed=0)
    assert x.shape == (n_samples, 2) and y.shape == (n_samples,)
    assert x.dtype == np.float32 and y.dtype == np.int64
    counts = np.bincount(y, minlength=n_classes)
    assert counts.max() - counts.min() <= 1 and len(counts) == n_classes
    x2, y2 = datasets.make_spirals(n_samples, n_classes, noise=0.05, seed=0)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert np.abs(x).max() < 1.5


def test_make_spirals_noise_free_radius():
    x, _ = datasets.make_spirals(50, 2, noise=0.0, seed=1)
    radius = np.hypot(x[:, 0], x[:, 1])
    assert radius.min() > 0 and radius.max() == pytest.approx(1.0)


@pytest.mark.parametrize("n_features", [1, 2, 5])
def test_make_blobs(n_features):
    x, y = datasets.make_blobs(301, 3, n_features, spread=0.5, seed=7)
    assert x.shape == (301, n_features) and y.shape == (301,)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), [101, 100, 100])
    x2, y2 = datasets.make_blobs(301, 3, n_features, spread=0.5, seed=7)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    # Per-class spread is close to the requested standard deviation.
    for k in range(3):
        assert x[y == k].std(axis=0).mean() == pytest.approx(0.5, rel=0.3)


def test_generators_unseeded_still_valid():
    x, y = datasets.make_blobs(seed=None)
    assert x.shape == (300, 2) and np.bincount(y).tolist() == [100, 100, 100]


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda: datasets.make_xor(n=0), ValueError),
        (lambda: datasets.make_xor(n=2.5), TypeError),
        (lambda: datasets.make_xor(noise=-1), ValueError),
        (lambda: datasets.make_spirals(n_samples=1, n_classes=2), ValueError),
        (lambda: datasets.make_spirals(noise=float("nan")), ValueError),
        (lambda: datasets.make_blobs(n_classes=0), ValueError),
        (lambda: datasets.make_blobs(n_features=True), TypeError),
        (lambda: datasets.make_blobs(spread=-0.1), ValueError),
    ],
)
def test_generators_validate_arguments(call, error):
    with pytest.raises(error):
        call()


# ---------------------------------------------------------------------------
# to_categorical
# ---------------------------------------------------------------------------


def test_to_categorical():
    out = datasets.to_categorical([2, 0, 1, 2])
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    out = datasets.to_categorical(np.array([1, 0], dtype=np.uint8), num_classes=4)
    np.testing.assert_array_equal(out, [[0, 1, 0, 0], [1, 0, 0, 0]])
    out = datasets.to_categorical(np.array([[0, 1], [1, 0]]), 2)
    assert out.shape == (2, 2, 2)
    np.testing.assert_array_equal(out.argmax(-1), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(datasets.to_categorical([1.0, 0.0]), [[0, 1], [1, 0]])
    assert datasets.to_categorical([], num_classes=3).shape == (0, 3)


@pytest.mark.parametrize(
    "y,num_classes,error,match",
    [
        ([0, 3], 3, ValueError, "out of range"),
        ([-1, 0], None, ValueError, ">= 0"),
        ([0.5], None, ValueError, "whole numbers"),
        ([], None, ValueError, "num_classes is required"),
        (["a"], None, TypeError, "integers"),
        ([0], 0, ValueError, "num_classes"),
    ],
)
def test_to_categorical_errors(y, num_classes, error, match):
    with pytest.raises(error, match=match):
        datasets.to_categorical(y, num_classes)
