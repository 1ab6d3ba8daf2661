"""Saving and loading models in a safe, single-file format (``.rpz``).

The file is a ZIP archive holding ``retroprop.json`` (format version, the
model's JSON configuration, the list of arrays with their shape, dtype and
SHA-256) and one ``.npy`` entry per array, written and read with
``allow_pickle=False``: loading a file can never run code. Writes are atomic
(temporary file in the same directory, flush + fsync, rename), so a save
that is interrupted leaves any previous file intact. A save killed before it
could clean up (SIGKILL, out of memory) leaves its hidden temporary file,
``.tmp-<pid>-<tag of the target>-*.rpz``; the next save of the same target
removes it once its process no longer runs.
"""
import hashlib
import io as _stdio
import json
import math
import os
import re
import tempfile
import zipfile
import zlib

import numpy as np

from .umask import default_file_mode

FORMAT_NAME = "retroprop-model"
FORMAT_VERSION = 1
_META = "retroprop.json"


def _sha256(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _npy_bytes(arr):
    buf = _stdio.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _target_tag(path):
    """A short tag of the target's file name (a hash: any name length fits)."""
    name = os.path.basename(path).encode("utf-8", "surrogateescape")
    return hashlib.sha1(name).hexdigest()[:12]


def _temporary_prefix(path, pid):
    """Start of the name of process pid's temporary files for target ``path``:
    hidden, in the target's directory (a rename within one file system is
    atomic), naming the writer and the target."""
    return f".tmp-{pid}-{_target_tag(path)}-"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True      # someone else's process (or not a pid at all): leave its file
    return True


def _remove_stale_temporaries(path):
    """Delete the temporary files that earlier saves of ``path`` left when
    their process was killed (SIGKILL, power loss, OOM) before it could
    clean up: those whose writer no longer runs. A save still running in
    another process (or thread of this one) keeps its file. Returns the
    names removed."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    pattern = re.compile(r"\.tmp-(\d+)-" + _target_tag(path) + r"-.*\.rpz\Z")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def _atomic_write_zip(path, entries):
    """Write {name: bytes} as a ZIP at ``path`` through a temporary file + rename.

    The temporary file is named after the writing process and the target,
    so the next save of the same target removes one a killed save left."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path, os.getpid()), suffix=".rpz",
                               dir=directory)
    try:
        os.chmod(tmp, default_file_mode())   # mkstemp's 0600 -> what the umask gives
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name, data in entries.items():
                    zf.writestr(name, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_model(model, path, optimizer=None, extra=None):
    """Write ``model`` (architecture and weights) to ``path``.

    With ``optimizer`` its state (step count, momentum buffers, ...) is saved
    too, so training can resume; ``extra`` is any JSON-serialisable dict
    (e.g. the epoch reached).
    """
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built; build it before saving")
    arrays, records = {}, []

    def add(group, key, arr):
        name = f"arrays/{len(records)}.npy"
        arrays[name] = _npy_bytes(arr)
        records.append({"group": group, "key": key, "file": name, "shape": list(arr.shape),
                        "dtype": arr.dtype.str, "sha256": _sha256(arr)})

    for layer, pname, param, _ in model.parameters():
        add("weights", f"{layer.name}/{pname}", param)
    for layer, sname, arr in model.states():  # non-trainable (moving statistics)
        add("state", f"{layer.name}/{sname}", arr)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": model.get_config(),
            "arrays": records, "extra": extra or {}}
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars = {}
        for k, v in state.items():
            if isinstance(v, dict):
                for sub_key, arr in v.items():
                    add(f"optimizer/{k}", str(sub_key), np.asarray(arr))
            else:
                scalars[k] = v
        meta["optimizer"] = {"config": optimizer.serialize(), "scalars": scalars}
    entries = {_META: json.dumps(meta, indent=1).encode("utf-8")}
    entries.update(arrays)
    _atomic_write_zip(path, entries)


#: What a model file may make load_model allocate, unless ``max_bytes`` says
#: otherwise: the arrays the file declares, and the weights its architecture
#: needs (building it allocates as much again for the gradients).
DEFAULT_MAX_BYTES = 2 * 1024**3
#: The JSON metadata (architecture, array list) may inflate to at most this:
#: a configuration of thousands of layers takes a few MB.
MAX_METADATA_BYTES = 32 * 1024**2
# Entries of a retroprop file are stored or deflated (save_model deflates).
# zipfile inflates bzip2 and LZMA data a whole input chunk at a time, a
# chunk that can expand ~10^5-fold: such entries are refused, not inflated.
_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# A .npy header is at most this long (format versions 1-3, 64-byte aligned).
_NPY_HEADER_MAX = 65536 + 64
_READ_CHUNK = 1 << 20
# Everything a hostile or damaged file can make the parsing and rebuilding
# code raise: each becomes a ValueError naming the file.
_BAD_FILE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError,
                    RuntimeError, NotImplementedError, OverflowError, MemoryError,
                    UnicodeDecodeError, EOFError, zipfile.BadZipFile, zlib.error)


def _check_max_bytes(max_bytes):
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
            or max_bytes < 0:
        raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
    return int(max_bytes)


def _entry_info(zf, path, name, what):
    """The ZipInfo of entry ``name``, which must be stored or deflated."""
    try:
        info = zf.getinfo(name)
    except (KeyError, TypeError):
        raise ValueError(f"{path}: incomplete file, {what} ({name!r}) is missing") from None
    if info.compress_type not in _COMPRESSIONS:
        raise ValueError(f"{path}: {what} ({name!r}) uses compression method "
                         f"{info.compress_type}; retroprop files are stored or deflated")
    return info


def _read_entry_into(zf, path, info, buffer, what):
    """Fill the writable bytes-like ``buffer`` from the open entry, in bounded
    chunks (never more than the entry declares); returns the entry's bytes
    left unread (0 for a whole entry). The ZIP reader checks the CRC at the end."""
    view = memoryview(buffer).cast("B")
    with zf.open(info) as f:
        filled = 0
        while filled < len(view):
            chunk = f.read(min(_READ_CHUNK, len(view) - filled))
            if not chunk:
                raise ValueError(f"{path}: {what} is shorter than its recorded size "
                                 f"(file truncated or damaged)")
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        return len(f.read(1))


def _read_metadata(zf, path):
    if _META not in zf.namelist():
        raise ValueError(f"{path}: not a retroprop model file (no {_META})")
    info = _entry_info(zf, path, _META, "the model metadata")
    if info.file_size > MAX_METADATA_BYTES:
        raise ValueError(f"{path}: the model metadata declares {info.file_size} bytes, more "
                         f"than the limit of {MAX_METADATA_BYTES} (not a retroprop file, or a "
                         f"hostile one)")
    raw = bytearray(info.file_size)
    try:
        if _read_entry_into(zf, path, info, raw, "the model metadata"):
            raise ValueError("longer than its declared size")
        meta = json.loads(raw.decode("utf-8"))
    except (zipfile.BadZipFile, ValueError, UnicodeDecodeError, EOFError, zlib.error,
            RecursionError) as e:
        raise ValueError(f"{path}: corrupted model metadata ({e!s:.300})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a retroprop model file (format {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"{path}: malformed metadata")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta.get('version')!r} is not supported "
                         f"(this retroprop reads version {FORMAT_VERSION})")
    return meta


def _array_records(meta, zf, path, max_bytes):
    """The metadata's array records, each checked (a key, a numeric dtype, a
    shape, an entry of the right size) before any is read, their total
    against ``max_bytes``: {(group, key): (record, dtype, shape, ZipInfo)}."""
    records = meta.get("arrays", [])
    if not isinstance(records, list):
        raise ValueError(f"{path}: malformed metadata (the array list is not a list)")
    checked, total = {}, 0
    for rec in records:
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in
                                                ("group", "key", "file", "dtype", "sha256")):
            raise ValueError(f"{path}: malformed array record {rec!r:.200}")
        dtype = np.dtype(rec["dtype"])
        shape = rec.get("shape")
        if dtype.kind not in "biuf" or dtype.hasobject or not isinstance(shape, list) \
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                           for d in shape):
            raise ValueError(f"{path}: array {rec['key']!r} has an invalid shape or dtype "
                             f"({shape!r:.100}, {rec['dtype']!r})")
        nbytes = math.prod(shape) * dtype.itemsize
        total += nbytes
        if total > max_bytes:
            raise ValueError(f"{path}: the arrays declared by the file take more than "
                             f"max_bytes={max_bytes} bytes (array {rec['key']!r} alone "
                             f"{nbytes}); pass a larger max_bytes to load_model if the "
                             f"file is trusted")
        info = _entry_info(zf, path, rec["file"], f"array {rec['key']!r}")
        if not nbytes < info.file_size <= nbytes + _NPY_HEADER_MAX:
            raise ValueError(f"{path}: array {rec['key']!r}: its entry holds {info.file_size} "
                             f"bytes, which does not fit its recorded shape {tuple(shape)} of "
                             f"{dtype} (file tampered with or damaged)")
        checked[(rec["group"], rec["key"])] = (rec, dtype, tuple(shape), info)
    return checked


def _read_array(zf, path, rec, dtype, shape, info):
    """One array, its .npy header checked against the record first, its data
    read straight into the array (bounded chunks: no second copy)."""
    try:
        return _read_array_data(zf, path, rec, dtype, shape, info)
    # zlib.error: deflate data damaged in place (sizes and directory intact)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: array {rec['key']!r} is corrupted ({e})") from None
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: array {rec['key']!r} is corrupted ({e})") from None


def _read_array_data(zf, path, rec, dtype, shape, info):
    what = f"array {rec['key']!r}"
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"{path}: {what}: unsupported .npy version {version}")
        header_bytes = f.tell()
    got_shape, fortran, got_dtype = header
    if tuple(got_shape) != shape or got_dtype != dtype:
        raise ValueError(f"{path}: {what} does not match its recorded shape/dtype "
                         f"(file tampered with or damaged)")
    if info.file_size != header_bytes + math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{path}: {what}: its entry size does not match its header")
    arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    with zf.open(info) as f:
        f.read(header_bytes)
        view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        filled = 0
        while filled < len(view):
            chunk = f.read(min(_READ_CHUNK, len(view) - filled))
            if not chunk:
                raise ValueError(f"{path}: {what} is truncated")
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
    if fortran:
        arr = arr.T
    if _sha256(arr) != rec["sha256"]:
        raise ValueError(f"{path}: {what} does not match its recorded checksum "
                         f"(file tampered with or damaged)")
    return arr


def _open_archive(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        return path, zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a retroprop model file (not a ZIP archive: {e})") from None
    except (ValueError, OverflowError, EOFError) as e:   # a damaged central directory
        raise ValueError(f"{path}: not a retroprop model file (damaged ZIP archive: {e})") \
            from None


def _parameter_elements(layer, input_shape):
    """(the elements of the weights and state that building ``layer``
    (deserialized, not built) on ``input_shape`` allocates, its output
    shape). Exact for retroprop's layers with weights; others count 0, so the
    total is never more than an honest file holds."""
    kind = type(layer).__name__
    output_shape = tuple(layer.compute_output_shape(tuple(input_shape)))
    channels = input_shape[-1] if input_shape else 0
    bias = lambda n: n if getattr(layer, "use_bias", False) else 0   # noqa: E731
    if kind == "Dense":
        return channels * layer.units + bias(layer.units), output_shape
    if kind in ("Conv1D", "Conv2D"):
        return math.prod(layer.kernel_size) * channels * layer.filters + bias(layer.filters), \
            output_shape
    if kind == "BatchNormalization":
        # gamma and beta (when learned), the moving mean and variance: one
        # per channel (compute_output_shape has resolved the channel axis)
        per_channel = 2 + bool(getattr(layer, "scale", True)) + bool(getattr(layer, "center", True))
        return per_channel * input_shape[layer._channel_axis - 1], output_shape
    if kind == "PReLU":
        return channels, output_shape
    inner = getattr(layer, "inner", None)
    if inner is not None:           # Residual: the inner stack and the shortcut
        total, shape = 0, tuple(input_shape)
        for sub in inner:
            n, shape = _parameter_elements(sub, shape)
            total += n
        shortcut = getattr(layer, "shortcut", None)
        if shortcut is not None:
            total += _parameter_elements(shortcut, tuple(input_shape))[0]
        return total, output_shape
    return 0, output_shape


def _architecture_bytes(model_config):
    """Bytes of the weights and state the configuration's layers need, from
    their configurations and shapes alone (nothing is allocated), or None
    for a configuration of another form."""
    from .layers import deserialize
    if not isinstance(model_config, dict) or not isinstance(model_config.get("layers"), list) \
            or not isinstance(model_config.get("input_shape"), (list, tuple)):
        return None
    shape = tuple(model_config["input_shape"])
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"invalid input shape {model_config['input_shape']!r:.100}")
    itemsize = np.dtype(model_config.get("dtype", "float32")).itemsize
    total = 0
    for config in model_config["layers"]:
        n, shape = _parameter_elements(deserialize(config), shape)
        total += n
    return total * itemsize


def load_model(path, backend=None, return_optimizer=False, max_bytes=DEFAULT_MAX_BYTES):
    """Rebuild a model saved by :func:`save_model` (with ``return_optimizer``,
    also the optimizer with its saved state, or None, and the ``extra`` dict).

    A file is checked before anything is inflated or allocated: the metadata
    entry against MAX_METADATA_BYTES, each array's entry against the shape
    and dtype its record declares, their total and the weights the
    architecture needs against ``max_bytes`` (DEFAULT_MAX_BYTES, 2 GiB; raise
    it for a larger model you trust). Arrays are read in bounded chunks
    straight into place. Any bad file raises ValueError naming it."""
    max_bytes = _check_max_bytes(max_bytes)
    path, zf = _open_archive(path)
    with zf:
        try:
            return _load(zf, path, backend, return_optimizer, max_bytes)
        except _BAD_FILE_ERRORS as e:
            if isinstance(e, ValueError) and str(e).startswith(path):
                raise
            if isinstance(e, MemoryError):
                raise ValueError(f"{path}: out of memory while loading (the file asks for "
                                 f"more than this machine has; max_bytes={max_bytes})") from None
            raise ValueError(f"{path}: invalid or damaged model file "
                             f"({type(e).__name__}: {e!s:.300})") from None


def _load(zf, path, backend, return_optimizer, max_bytes):
    from .model import Sequential
    from . import optim as optim_module

    meta = _read_metadata(zf, path)
    records = _array_records(meta, zf, path, max_bytes)
    try:
        needed = _architecture_bytes(meta["model"])
    except _BAD_FILE_ERRORS as e:
        raise ValueError(f"{path}: invalid model configuration ({e!s:.300})") from None
    if needed is not None:
        held = sum(math.prod(shape) * dtype.itemsize for (group, _), (_, dtype, shape, _)
                   in records.items() if group in ("weights", "state"))
        if needed > max_bytes:
            raise ValueError(f"{path}: the architecture needs {needed} bytes of weights, more "
                             f"than max_bytes={max_bytes}; pass a larger max_bytes to "
                             f"load_model if the file is trusted")
        if needed > held:
            raise ValueError(f"{path}: the architecture needs {needed} bytes of weights, the "
                             f"file holds {held}: their shapes do not fit it (incomplete or "
                             f"tampered with)")
    try:
        model = Sequential.from_config(meta["model"], backend=backend)
    except _BAD_FILE_ERRORS as e:
        raise ValueError(f"{path}: invalid model configuration ({e!s:.300})") from None
    if not model.built:
        raise ValueError(f"{path}: the saved model has no input shape")
    wanted = []
    for layer, pname, param, _ in model.parameters():
        wanted.append((("weights", f"{layer.name}/{pname}"), param.shape, "weights"))
    for layer, sname, state in model.states():  # set_weights takes state after params
        wanted.append((("state", f"{layer.name}/{sname}"), state.shape, "state"))
    # Shapes first, from the records: nothing is inflated for a file that
    # does not fit its architecture.
    for key, shape, what in wanted:
        if key not in records:
            raise ValueError(f"{path}: incomplete file, no {what} for {key[1]}")
        if records[key][2] != tuple(shape):
            raise ValueError(f"{path}: {what} {key[1]} has shape {records[key][2]}, "
                             f"the layer needs {tuple(shape)}")
    # Only what the model needs (and, when asked for, the optimizer's state).
    keys = [key for key, _, _ in wanted]
    if return_optimizer:
        keys += [key for key in records if key[0].startswith("optimizer/")]
    arrays = {key: _read_array(zf, path, *records[key]) for key in keys}
    model.set_weights([arrays[key] for key, _, _ in wanted])
    if not return_optimizer:
        return model
    optimizer = None
    if "optimizer" in meta:
        optimizer = optim_module.deserialize(meta["optimizer"]["config"]) \
            if hasattr(optim_module, "deserialize") else None
        if optimizer is not None:
            state = dict(meta["optimizer"]["scalars"])
            for (group, key), arr in arrays.items():
                if group.startswith("optimizer/"):
                    state.setdefault(group.split("/", 1)[1], {})[key] = arr
            optimizer.load_state_dict(state)
    return model, optimizer, meta.get("extra", {})
