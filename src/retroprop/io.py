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
import os
import re
import tempfile
import zipfile
import zlib

import numpy as np

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


def _read_archive(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a retroprop model file (not a ZIP archive: {e})") from None
    with zf:
        try:
            meta = json.loads(zf.read(_META).decode("utf-8"))
        except KeyError:
            raise ValueError(f"{path}: not a retroprop model file (no {_META})") from None
        except (zipfile.BadZipFile, ValueError, UnicodeDecodeError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupted model metadata ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}: not a retroprop model file (format {meta.get('format')!r})"
                             if isinstance(meta, dict) else f"{path}: malformed metadata")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {meta.get('version')!r} is not supported "
                             f"(this retroprop reads version {FORMAT_VERSION})")
        arrays = {}
        for rec in meta.get("arrays", []):
            try:
                raw = zf.read(rec["file"])
                arr = np.lib.format.read_array(_stdio.BytesIO(raw), allow_pickle=False)
            except KeyError:
                raise ValueError(f"{path}: incomplete file, array {rec.get('file')!r} "
                                 f"({rec.get('key')}) is missing") from None
            # zlib.error: deflate data damaged in place (sizes and directory intact)
            except (zipfile.BadZipFile, ValueError, EOFError, OSError, zlib.error) as e:
                raise ValueError(f"{path}: array {rec.get('key')!r} is corrupted ({e})") from None
            if list(arr.shape) != rec["shape"] or arr.dtype.str != rec["dtype"] \
                    or _sha256(arr) != rec["sha256"]:
                raise ValueError(f"{path}: array {rec['key']!r} does not match its recorded "
                                 f"shape/dtype/checksum (file tampered with or damaged)")
            arrays[(rec["group"], rec["key"])] = arr
    return meta, arrays


def load_model(path, backend=None, return_optimizer=False):
    """Rebuild a model saved by :func:`save_model` (with ``return_optimizer``,
    also the optimizer with its saved state, or None, and the ``extra`` dict)."""
    from .model import Sequential
    from . import optim as optim_module

    meta, arrays = _read_archive(path)
    try:
        model = Sequential.from_config(meta["model"], backend=backend)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid model configuration ({e})") from None
    if not model.built:
        raise ValueError(f"{path}: the saved model has no input shape")
    weights = []
    for layer, pname, param, _ in model.parameters():
        key = ("weights", f"{layer.name}/{pname}")
        if key not in arrays:
            raise ValueError(f"{path}: incomplete file, no weights for {key[1]}")
        arr = arrays[key]
        if arr.shape != param.shape:
            raise ValueError(f"{path}: weights for {key[1]} have shape {arr.shape}, "
                             f"the layer needs {param.shape}")
        weights.append(arr)
    for layer, sname, state in model.states():  # set_weights takes state after params
        key = ("state", f"{layer.name}/{sname}")
        if key not in arrays:
            raise ValueError(f"{path}: incomplete file, no state for {key[1]}")
        if arrays[key].shape != state.shape:
            raise ValueError(f"{path}: state {key[1]} has shape {arrays[key].shape}, "
                             f"the layer needs {state.shape}")
        weights.append(arrays[key])
    model.set_weights(weights)
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
