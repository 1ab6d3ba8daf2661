"""Small files that ask for a lot of memory (issue 23, item 8), and bad files
that raised something other than ValueError.

Each hostile file is generated here (a few hundred KB at most, in well under
a second) and loaded in a child process that reports its peak memory over
the load (Linux: VmHWM after resetting it through /proc/self/clear_refs):
every one must be refused with a ValueError naming the file, before its
payload is inflated or allocated. Without the checks these peaks were the
bomb's size (128 MiB here; 1-3 GB for the issue's files).
"""
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import retroprop as rp
from retroprop import datasets

MiB = 1024 * 1024
BOMB = 128 * MiB             # what each bomb inflates to
SMALL_BOMB = 64 * MiB        # the same for the slow compressors
PEAK_LIMIT = 48 * MiB        # what refusing it may cost, at most


# ---------------------------------------------------------------- writing hostile files

def npy_header(shape, dtype=np.float32):
    buf = io.BytesIO()
    template = np.broadcast_to(np.zeros((), dtype), shape)    # no memory for the data
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(template))
    return buf.getvalue()


def zeros_sha256(nbytes):
    digest, chunk = hashlib.sha256(), bytes(MiB)
    for done in range(0, nbytes, MiB):
        digest.update(chunk[:min(MiB, nbytes - done)])
    return digest.hexdigest()


def write_rpz(path, meta, arrays, compression=zipfile.ZIP_DEFLATED, meta_bytes=None):
    """A model file: ``meta`` as retroprop.json (or ``meta_bytes``), and for
    each record of arrays {file: (shape, zero_bytes)} a .npy entry whose data
    is ``zero_bytes`` zeros (streamed: never held in memory)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("retroprop.json", meta_bytes if meta_bytes is not None
                    else json.dumps(meta).encode())
        for name, (shape, zero_bytes) in arrays.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            with zf.open(info, "w", force_zip64=True) as f:
                f.write(npy_header(shape))
                chunk = bytes(4 * MiB)
                for done in range(0, zero_bytes, len(chunk)):
                    f.write(chunk[:min(len(chunk), zero_bytes - done)])
    return path


def dense_meta(units, n_in, records):
    return {"format": "retroprop-model", "version": 1,
            "model": {"name": "sequential", "input_shape": [n_in], "dtype": "float32",
                      "seed": 0, "layers": [{"class_name": "Dense",
                                             "config": {"units": units, "name": "dense"}}]},
            "arrays": records, "extra": {}}


def record(key, shape, nbytes, file):
    return {"group": "weights", "key": key, "file": file, "shape": list(shape),
            "dtype": "<f4", "sha256": zeros_sha256(nbytes)}


def bomb_files(tmp_path):
    """{name: (path, load keyword arguments)}: the hostile model files."""
    n = BOMB // 4
    side = int(np.sqrt(n))           # a square kernel of about BOMB bytes
    files = {}
    # An entry whose record says 10 floats but which inflates to 128 MiB.
    files["deflate_entry_larger_than_its_record"] = (write_rpz(
        tmp_path / "lying_entry.rpz",
        dense_meta(10, 1, [record("dense/W", (1, 10), 40, "arrays/0.npy"),
                           record("dense/b", (10,), 40, "arrays/1.npy")]),
        {"arrays/0.npy": ((1, 10), BOMB), "arrays/1.npy": ((10,), 40)}), {})
    # A consistent file of a 128 MiB model: refused against max_bytes.
    files["deflate_model_over_max_bytes"] = (write_rpz(
        tmp_path / "big_model.rpz",
        dense_meta(side, side, [record("dense/W", (side, side), side * side * 4, "arrays/0.npy"),
                                record("dense/b", (side,), side * 4, "arrays/1.npy")]),
        {"arrays/0.npy": ((side, side), side * side * 4),
         "arrays/1.npy": ((side,), side * 4)}), {"max_bytes": 64 * MiB})
    # A 128 MiB array the architecture does not use: never read.
    files["deflate_unused_array"] = (write_rpz(
        tmp_path / "unused.rpz",
        dense_meta(2, 2, [record("dense/W", (2, 2), 16, "arrays/0.npy"),
                          record("dense/b", (2,), 8, "arrays/1.npy"),
                          record("extra/X", (n,), n * 4, "arrays/2.npy")]),
        {"arrays/0.npy": ((2, 2), 16), "arrays/1.npy": ((2,), 8),
         "arrays/2.npy": ((n,), n * 4)}), {})
    # bzip2 and LZMA: zipfile inflates them a whole input chunk at a time.
    # (64 MiB: LZMA takes seconds to compress more.)
    side = int(np.sqrt(SMALL_BOMB // 4))
    for name, method in (("bzip2", zipfile.ZIP_BZIP2), ("lzma", zipfile.ZIP_LZMA)):
        files[f"{name}_entry"] = (write_rpz(
            tmp_path / f"{name}.rpz",
            dense_meta(side, side, [record("dense/W", (side, side), side * side * 4,
                                           "arrays/0.npy"),
                                    record("dense/b", (side,), side * 4, "arrays/1.npy")]),
            {"arrays/0.npy": ((side, side), side * side * 4),
             "arrays/1.npy": ((side,), side * 4)}, compression=method), {})
    # Dense(30000) on 30000 inputs (6.7 GiB with its gradient), and no weights.
    files["architecture_without_weights"] = (write_rpz(
        tmp_path / "architecture.rpz",
        dense_meta(30000, 30000, [record("dense/b", (30000,), 120000, "arrays/0.npy")]),
        {"arrays/0.npy": ((30000,), 120000)}), {})
    # Metadata of 128 MiB of JSON whitespace.
    files["json_whitespace"] = (write_rpz(
        tmp_path / "whitespace.rpz", None, {},
        meta_bytes=b" " * BOMB + json.dumps(dense_meta(2, 2, [])).encode()), {})
    return files


def gzip_bomb_idx(path, declared_bytes, real_zero_bytes):
    """An IDX file (uint8, 1-D) declaring declared_bytes, gzip of
    real_zero_bytes zeros after the header."""
    header = b"\x00\x00\x08\x01" + struct.pack(">I", declared_bytes)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        chunk = bytes(4 * MiB)
        for done in range(0, real_zero_bytes, len(chunk)):
            f.write(chunk[:min(len(chunk), real_zero_bytes - done)])
    return path


# ---------------------------------------------------------------- loading them in a child

CHILD = textwrap.dedent("""
    import json, sys
    import retroprop as rp
    from retroprop import datasets

    def peak_bytes():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    def current_bytes():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024

    results = {}
    for name, (kind, path, kwargs) in json.loads(sys.argv[1]).items():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                 # the peak starts again from here
        before = current_bytes()
        try:
            if kind == "model":
                rp.load_model(path, **kwargs)
                outcome = "loaded"
            else:
                datasets.read_idx(path, **kwargs)
                outcome = "loaded"
        except ValueError as e:
            outcome = "ValueError: " + str(e)
        except BaseException as e:
            outcome = type(e).__name__ + ": " + str(e)
        results[name] = {"outcome": outcome, "peak": peak_bytes() - before}
    print(json.dumps(results))
""")


def load_in_child(cases):
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# A well-formed file whose unused array is skipped: it loads, cheaply.
LOADS = ("deflate_unused_array",)

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                                reason="peak memory measured through Linux's /proc")


@needs_proc
def test_model_file_bombs_are_refused_before_inflating(tmp_path):
    """Peak memory of the load of each hostile file (printed with -s)."""
    files = bomb_files(tmp_path)
    for name, (path, _) in files.items():
        assert os.path.getsize(path) < 2 * MiB, name          # small files
    results = load_in_child({name: ("model", str(path), kwargs)
                             for name, (path, kwargs) in files.items()})
    report = []
    for name, (path, _) in files.items():
        r = results[name]
        report.append(f"{name}: {os.path.getsize(path) / 1024:.1f} KiB file, peak "
                      f"{r['peak'] / MiB:.1f} MiB: {r['outcome'][:120]}")
        if name in LOADS:
            assert r["outcome"] == "loaded", r["outcome"]
        else:
            assert r["outcome"].startswith("ValueError: " + str(path)), r["outcome"]
    print("\n".join(report))
    for name in files:
        assert results[name]["peak"] < PEAK_LIMIT, "\n".join(report)


@needs_proc
def test_idx_gzip_bombs_are_refused_before_inflating(tmp_path):
    cases = {
        # 2 GB declared, 1 MiB of real data: more than gzip can hold, and than the limit
        "declares_2GB": ("idx", str(gzip_bomb_idx(tmp_path / "a.gz", 2 * 1024 * MiB, MiB)), {}),
        # a real 128 MiB payload (~600 KB of gzip), over a 64 MiB limit
        "real_128MiB": ("idx", str(gzip_bomb_idx(tmp_path / "b.gz", BOMB, BOMB)),
                        {"max_bytes": 64 * MiB}),
    }
    results = load_in_child(cases)
    for name, (_, path, _) in cases.items():
        r = results[name]
        print(f"{name}: {os.path.getsize(path) / 1024:.1f} KiB file, peak {r['peak'] / MiB:.1f} "
              f"MiB: {r['outcome'][:120]}")
        assert r["outcome"].startswith("ValueError: " + path), r["outcome"]
        assert "max_bytes" in r["outcome"]
        assert r["peak"] < PEAK_LIMIT


def test_idx_within_limits_still_reads_and_is_native_and_writable(tmp_path):
    data = np.arange(1000, dtype=">i4").reshape(10, 100)
    raw = b"\x00\x00\x0c\x02" + struct.pack(">II", 10, 100) + data.tobytes()
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(raw))
    got = datasets.read_idx(path)
    np.testing.assert_array_equal(got, data)
    assert got.dtype == np.dtype("=i4") and got.flags.writeable
    with pytest.raises(ValueError, match="max_bytes"):
        datasets.read_idx(path, max_bytes=3999)
    with pytest.raises(ValueError, match="max_bytes"):
        datasets.read_idx(path, max_bytes=-1)


def test_a_model_within_max_bytes_loads(tmp_path):
    model = rp.Sequential([rp.layers.Dense(64)], input_shape=(64,), seed=0)
    path = tmp_path / "m.rpz"
    model.save(path)
    loaded = rp.load_model(path, max_bytes=64 * 65 * 4)
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])
    with pytest.raises(ValueError, match="max_bytes"):
        rp.load_model(path, max_bytes=64 * 65 * 4 - 1)
    with pytest.raises(ValueError, match="max_bytes"):
        rp.load_model(path, max_bytes="a lot")


# ---------------------------------------------------------------- only ValueError

def _valid_file(tmp_path):
    model = rp.Sequential([rp.layers.Dense(3, activation="relu"), rp.layers.BatchNormalization(),
                           rp.layers.Dense(2, activation="softmax")], input_shape=(4,), seed=0)
    path = tmp_path / "valid.rpz"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _rewrite(tmp_path, entries, name, edit_meta=None, raw_meta=None):
    entries = dict(entries)
    if raw_meta is not None:
        entries["retroprop.json"] = raw_meta
    elif edit_meta is not None:
        meta = json.loads(entries["retroprop.json"])
        edit_meta(meta)
        entries["retroprop.json"] = json.dumps(meta).encode()
    path = tmp_path / f"{name}.rpz"
    with zipfile.ZipFile(path, "w") as zf:
        for entry, data in entries.items():
            zf.writestr(entry, data)
    return path


def _set(path_in_meta, value):
    def edit(meta):
        target = meta
        for key in path_in_meta[:-1]:
            target = target[key]
        target[path_in_meta[-1]] = value
    return edit


BAD_METADATA = {
    "nested_json": dict(raw_meta=b"[" * 100000 + b"]" * 100000),
    "meta_not_utf8": dict(raw_meta=b"\xff\xfe{}"),
    "model_is_a_list": dict(edit_meta=_set(["model"], [1, 2])),
    "layers_is_a_number": dict(edit_meta=_set(["model", "layers"], 7)),
    "layer_config_is_a_string": dict(edit_meta=_set(["model", "layers", 0], "Dense")),
    "units_is_a_string": dict(edit_meta=_set(["model", "layers", 0, "config", "units"], "x")),
    "units_is_huge": dict(edit_meta=_set(["model", "layers", 0, "config", "units"], 10**30)),
    "units_is_a_float": dict(edit_meta=_set(["model", "layers", 0, "config", "units"], 2.5)),
    "unknown_class": dict(edit_meta=_set(["model", "layers", 0, "class_name"], "Nope")),
    "input_shape_negative": dict(edit_meta=_set(["model", "input_shape"], [-4])),
    "input_shape_strings": dict(edit_meta=_set(["model", "input_shape"], ["a"])),
    "dtype_object": dict(edit_meta=_set(["model", "dtype"], "object")),
    "dtype_nonsense": dict(edit_meta=_set(["model", "dtype"], "float37")),
    "arrays_is_a_dict": dict(edit_meta=_set(["arrays"], {"a": 1})),
    "record_shape_huge": dict(edit_meta=_set(["arrays", 0, "shape"], [2**62, 2**62])),
    "record_shape_strings": dict(edit_meta=_set(["arrays", 0, "shape"], ["x"])),
    "record_dtype_object": dict(edit_meta=_set(["arrays", 0, "dtype"], "|O")),
    "record_dtype_nonsense": dict(edit_meta=_set(["arrays", 0, "dtype"], "<q9")),
    "record_file_missing": dict(edit_meta=_set(["arrays", 0, "file"], "arrays/99.npy")),
    "record_file_not_a_string": dict(edit_meta=_set(["arrays", 0, "file"], 5)),
    "record_is_a_string": dict(edit_meta=_set(["arrays", 0], "x")),
    "bn_axis_string": dict(edit_meta=_set(["model", "layers", 1, "config", "axis"], "x")),
    "bn_axis_out_of_range": dict(edit_meta=_set(["model", "layers", 1, "config", "axis"], 9)),
    "activation_nonsense": dict(edit_meta=_set(["model", "layers", 0, "config", "activation"],
                                               {"name": "elu", "alpha": "x"})),
    "activation_elu_1e300": dict(edit_meta=_set(["model", "layers", 0, "config", "activation"],
                                                {"name": "elu", "alpha": 1e300})),
    "regularizer_nonsense": dict(edit_meta=_set(["model", "layers", 0, "config",
                                                 "kernel_regularizer"], {"x": 1})),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_every_bad_file_is_a_value_error_naming_it(tmp_path, case):
    path = _rewrite(tmp_path, _valid_file(tmp_path), case, **BAD_METADATA[case])
    with pytest.raises(ValueError, match=str(path)):
        rp.load_model(path)
    with pytest.raises(ValueError, match=str(path)):
        rp.load_model(path, return_optimizer=True)


@pytest.mark.parametrize("mangle", ["npy_header_shape", "npy_header_dtype", "npy_version",
                                    "npy_fortran", "entry_truncated"])
def test_damaged_array_entries_are_value_errors(tmp_path, mangle):
    entries = _valid_file(tmp_path)
    raw = entries["arrays/0.npy"]
    if mangle == "npy_header_shape":
        raw = raw.replace(b"(4, 3)", b"(3, 4)")
    elif mangle == "npy_header_dtype":
        raw = raw.replace(b"<f4", b"<i4")
    elif mangle == "npy_version":
        raw = raw[:6] + b"\x09\x00" + raw[8:]
    elif mangle == "npy_fortran":
        raw = raw.replace(b"False", b"True ")
    else:
        raw = raw[:-4]
    entries["arrays/0.npy"] = raw
    path = _rewrite(tmp_path, entries, mangle)
    with pytest.raises(ValueError, match=str(path)):
        rp.load_model(path)


def test_bzip2_and_lzma_helpers_really_compress():
    """The compressed bombs above are small because these methods compress a
    run of zeros ~10^5-fold (what made them dangerous to inflate blindly)."""
    assert len(bz2.compress(bytes(16 * MiB))) < 4096
    assert len(lzma.compress(bytes(16 * MiB))) < 8192
