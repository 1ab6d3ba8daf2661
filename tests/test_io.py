"""Save/load: round trip, optimizer state, refusal of damaged or foreign
files, and atomicity (a save killed half-way leaves the old file intact)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import retroprop as rp


def small_model(seed=0):
    return rp.Sequential([rp.layers.Dense(7, activation="tanh"),
                          rp.layers.Dense(3, activation="softmax")], input_shape=(5,), seed=seed)


def test_round_trip_predicts_identically(tmp_path):
    model = small_model()
    x = np.random.default_rng(0).standard_normal((11, 5)).astype(np.float32)
    path = tmp_path / "m.rpz"
    model.save(path)
    loaded = rp.load_model(path)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_optimizer_state_round_trip(tmp_path):
    from retroprop import io
    model = small_model()
    opt = rp.optim.SGD(lr=0.1, momentum=0.9)
    trainer = rp.Trainer(model, "categorical_crossentropy", opt)
    x = np.random.default_rng(1).standard_normal((32, 5)).astype(np.float32)
    y = np.arange(32) % 3
    trainer.fit(x, y, epochs=2, batch_size=8, verbose=0)
    io.save_model(model, tmp_path / "ckpt.rpz", optimizer=opt, extra={"epoch": 2})
    model2, opt2, extra = io.load_model(tmp_path / "ckpt.rpz", return_optimizer=True)
    assert extra == {"epoch": 2}
    assert opt2.iterations == opt.iterations and opt2.momentum == 0.9
    assert set(opt2.velocity) == set(opt.velocity)
    for k in opt.velocity:
        np.testing.assert_array_equal(opt2.velocity[k], opt.velocity[k])


def test_no_pickle_in_file(tmp_path):
    small_model().save(tmp_path / "m.rpz")
    with zipfile.ZipFile(tmp_path / "m.rpz") as zf:
        meta = json.loads(zf.read("retroprop.json"))
        assert meta["format"] == "retroprop-model" and meta["version"] == 1
        for name in zf.namelist():
            if name.endswith(".npy"):
                arr = np.lib.format.read_array(zf.open(name), allow_pickle=False)
                assert arr.dtype != object


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "m.rpz"
    small_model().save(path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        bad = tmp_path / f"cut{cut}.rpz"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=str(bad.name)):
            rp.load_model(bad)


def test_tampered_weights_are_refused(tmp_path):
    path = tmp_path / "m.rpz"
    small_model().save(path)
    # Rewrite one array with different values but keep the metadata.
    tampered = tmp_path / "t.rpz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "arrays/0.npy":
                arr = np.lib.format.read_array(src.open(item.filename)) + 1
                import io as stdio
                buf = stdio.BytesIO()
                np.lib.format.write_array(buf, arr)
                data = buf.getvalue()
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="tampered"):
        rp.load_model(tampered)


def test_foreign_and_missing_files(tmp_path):
    foreign = tmp_path / "x.rpz"
    foreign.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a retroprop model file"):
        rp.load_model(foreign)
    other_zip = tmp_path / "y.rpz"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match="not a retroprop model file"):
        rp.load_model(other_zip)
    with pytest.raises(FileNotFoundError):
        rp.load_model(tmp_path / "absent.rpz")
    future = tmp_path / "z.rpz"
    with zipfile.ZipFile(future, "w") as zf:
        zf.writestr("retroprop.json", json.dumps({"format": "retroprop-model", "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        rp.load_model(future)


def test_killed_save_leaves_previous_file_intact(tmp_path):
    """A child process starts saving a large model over an existing file and
    is killed with SIGKILL mid-write: the old file must still load."""
    path = tmp_path / "m.rpz"
    small_model(seed=3).save(path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, sys, zipfile
        import retroprop as rp
        from retroprop import io
        real_writestr = zipfile.ZipFile.writestr
        count = [0]
        def slow_writestr(self, *a, **k):
            count[0] += 1
            if count[0] == 2:
                print("writing", flush=True)
                os.kill(os.getpid(), 9)   # die in the middle of the archive
            return real_writestr(self, *a, **k)
        zipfile.ZipFile.writestr = slow_writestr
        m = rp.Sequential([rp.layers.Dense(300), rp.layers.Dense(300)], input_shape=(300,), seed=1)
        m.save({str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "writing" in proc.stdout
    assert path.read_bytes() == before
    rp.load_model(path)  # still a valid model
    leftovers = [p for p in os.listdir(tmp_path) if p != "m.rpz"]
    # The dead process's half-written temporary file remains (proof that the
    # kill came mid-write), but only under a hidden temporary name.
    assert leftovers and all(name.startswith(".tmp-") for name in leftovers)
    with pytest.raises(ValueError):
        rp.load_model(tmp_path / leftovers[0])
    # The next save of the same target removes what the killed one left.
    small_model(seed=4).save(path)
    assert sorted(os.listdir(tmp_path)) == ["m.rpz"]
    rp.load_model(path)


def test_stale_temporaries_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    """Twelve saves killed mid-write (issue 23 counted 11 files, 67.7 MiB, after
    12 kills): each save removes the file the killed one before it left, so
    one remains, until the next save. A file of another target, or of a
    writer still running, stays."""
    path = tmp_path / "model.rpz"
    script = textwrap.dedent(f"""
        import os, zipfile
        import retroprop as rp
        real_writestr = zipfile.ZipFile.writestr
        def dying_writestr(self, *a, **k):
            os.kill(os.getpid(), 9)
        zipfile.ZipFile.writestr = dying_writestr
        m = rp.Sequential([rp.layers.Dense(4)], input_shape=(3,), seed=1)
        m.save({str(path)!r})
    """)
    for _ in range(12):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL
    assert len(os.listdir(tmp_path)) == 1
    other = tmp_path / "other.rpz"
    small_model().save(other)
    # a temporary of other.rpz left by a dead writer, and one of model.rpz
    # whose writer (this process's parent) still runs
    from retroprop import io as rp_io
    (tmp_path / (rp_io._temporary_prefix(str(other), 2**22 + 7) + "x.rpz")).write_bytes(b"x")
    running = tmp_path / (rp_io._temporary_prefix(str(path), os.getppid()) + "y.rpz")
    running.write_bytes(b"y")
    small_model().save(path)
    left = sorted(os.listdir(tmp_path))
    assert "model.rpz" in left and "other.rpz" in left and running.name in left
    assert len(left) == 4     # + the dead writer's file of other.rpz, not this target's
    rp.load_model(path)


@pytest.mark.parametrize("make_optimizer", [
    lambda: rp.optim.SGD(lr=0.05, momentum=0.9),
    lambda: rp.optim.Adam(lr=0.01),
], ids=["momentum", "adam"])
def test_checkpoint_resume_matches_uninterrupted_training(tmp_path, make_optimizer):
    """2 epochs, a checkpoint, a fresh process-like reload, 2 more epochs ==
    4 epochs straight: same weights and optimizer state, bit for bit."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)

    straight = small_model(seed=5)
    straight_opt = make_optimizer()
    rp.Trainer(straight, "categorical_crossentropy", straight_opt).fit(
        x, y, epochs=4, batch_size=8, validation_split=0.2, verbose=0)

    first = small_model(seed=5)
    ckpt = rp.callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch}.rpz"))
    rp.Trainer(first, "categorical_crossentropy", make_optimizer(), callbacks=[ckpt]).fit(
        x, y, epochs=2, batch_size=8, validation_split=0.2, verbose=0)

    model, optimizer, extra = rp.load_model(ckpt.saved[-1], return_optimizer=True)
    assert extra == {"epoch": 2}
    assert type(optimizer) is type(straight_opt) and optimizer.iterations == 2 * 6
    history = rp.Trainer(model, "categorical_crossentropy", optimizer).fit(
        x, y, epochs=4, batch_size=8, validation_split=0.2, verbose=0,
        initial_epoch=extra["epoch"])
    assert history.epoch == [2, 3] and len(history.history["loss"]) == 2
    for resumed, reference in zip(model.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(resumed, reference)
    assert optimizer.iterations == straight_opt.iterations
    for key, arr in straight_opt.state_arrays().items():
        np.testing.assert_array_equal(optimizer.state_arrays()[key], arr)


def test_resume_without_the_optimizer_state_differs(tmp_path):
    """The check above can fail: a fresh optimizer (zero momentum) diverges."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    straight = small_model(seed=5)
    rp.Trainer(straight, "categorical_crossentropy", rp.optim.SGD(lr=0.05, momentum=0.9)).fit(
        x, y, epochs=4, batch_size=8, verbose=0)
    ckpt = rp.callbacks.ModelCheckpoint(str(tmp_path / "c.rpz"), save_optimizer=False)
    rp.Trainer(small_model(seed=5), "categorical_crossentropy",
               rp.optim.SGD(lr=0.05, momentum=0.9), callbacks=[ckpt]).fit(
        x, y, epochs=2, batch_size=8, verbose=0)
    model, optimizer, extra = rp.load_model(ckpt.saved[-1], return_optimizer=True)
    assert optimizer is None and extra == {"epoch": 2}
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.05, momentum=0.9)).fit(
        x, y, epochs=4, batch_size=8, verbose=0, initial_epoch=2)
    assert not np.array_equal(model.get_weights()[0], straight.get_weights()[0])


def test_initial_epoch_is_validated():
    trainer = rp.Trainer(small_model(), "categorical_crossentropy", "sgd")
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="initial_epoch"):
        trainer.fit(x, np.zeros(4, np.int64), epochs=2, initial_epoch=3, verbose=0)
    with pytest.raises(ValueError, match="initial_epoch"):
        trainer.fit(x, np.zeros(4, np.int64), epochs=2, initial_epoch=-1, verbose=0)


def _damage_entry(path, entry, mangle):
    """Rewrite the compressed bytes of one ZIP entry in place (directory intact)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(entry)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start:start + info.compress_size] = mangle(bytes(data[start:start + info.compress_size]))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("entry", ["retroprop.json", "arrays/0.npy", "arrays/3.npy"])
@pytest.mark.parametrize("mangle", [
    lambda b: bytes(len(b)),                                    # zeroed
    lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0x55]) + b[len(b) // 2 + 1:],  # one byte
], ids=["zeroed", "flipped"])
def test_damaged_entries_are_refused_with_value_error(tmp_path, entry, mangle):
    path = tmp_path / "m.rpz"
    small_model().save(path)
    _damage_entry(path, entry, mangle)
    with pytest.raises(ValueError, match="m.rpz"):
        rp.load_model(path)


def test_tampered_configuration_is_refused(tmp_path):
    """Metadata edited to a different architecture: the arrays no longer fit."""
    path = tmp_path / "m.rpz"
    small_model().save(path)
    with zipfile.ZipFile(path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    meta = json.loads(entries["retroprop.json"])
    meta["model"]["layers"][0]["config"]["units"] = 8
    entries["retroprop.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    with pytest.raises(ValueError, match="shape"):
        rp.load_model(path)


def test_frozen_layers_stay_frozen_after_load(tmp_path):
    L = rp.layers
    model = rp.Sequential([L.Dense(4, activation="relu"), L.Residual([L.Dense(4)]),
                           L.Dense(2, activation="softmax")], input_shape=(3,), seed=0)
    model.layers[0].trainable = False
    model.layers[1].sublayers()[0].trainable = False
    path = str(tmp_path / "frozen.rpz")
    model.save(path)
    loaded = rp.load_model(path)
    assert [layer.trainable for layer in loaded.layers] == [False, True, True]
    assert [layer.trainable for layer in loaded.layers[1].sublayers()] == [False]
    # Training the loaded model leaves the frozen kernels exactly as saved.
    frozen = [loaded.layers[0].params["W"].copy(), loaded.layers[1].sublayers()[0].params["W"].copy()]
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    rp.Trainer(loaded, "categorical_crossentropy", rp.optim.SGD(lr=0.5)).fit(
        x, np.arange(8) % 2, epochs=2, batch_size=4, verbose=0)
    np.testing.assert_array_equal(loaded.layers[0].params["W"], frozen[0])
    np.testing.assert_array_equal(loaded.layers[1].sublayers()[0].params["W"], frozen[1])
    assert not np.array_equal(loaded.layers[2].params["W"], model.layers[2].params["W"])


def test_a_bad_trainable_flag_is_refused():
    with pytest.raises(ValueError, match="'trainable' must be true or false"):
        rp.layers.deserialize({"class_name": "Dense", "config": {"units": 2}, "trainable": "no"})
