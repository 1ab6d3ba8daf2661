"""One model used from several threads (issue 23, item 6): ``predict`` and
``evaluate`` from any number of threads give the single-thread answers, also
while a ``fit`` runs (they see the weights between two steps), and a second
``fit`` of a model already being trained is refused with a clear error.

The threads are real: the C kernels release the GIL, so two predicts run
their kernels at the same time. (Before each thread got plans of its own,
two threads predicting with one MLP overwrote each other's layer buffers:
564 of 600 results were wrong.)"""
import threading

import numpy as np
import pytest

import retroprop as rp

L = rp.layers


def _mlp(seed=0):
    return rp.Sequential([L.Flatten(), L.Dense(64, activation="relu"),
                          L.Dense(32, activation="tanh"), L.Dense(5, activation="softmax")],
                         input_shape=(6, 6, 1), seed=seed)


def _with_python_nodes(seed=0):
    """Nodes run in Python (BatchNormalization, PReLU, GlobalAvgPool2D) and in C."""
    return rp.Sequential([L.Conv2D(4, 3, padding="same", activation="relu"),
                          L.BatchNormalization(), L.PReLU(), L.GlobalAvgPool2D(),
                          L.Dense(5, activation="softmax")], input_shape=(6, 6, 1), seed=seed)


def _graph(seed=0):
    a, b = rp.Input((6, 6, 1), name="a"), rp.Input((3,), name="b")
    shared = L.Dense(8, activation="tanh")
    h = L.Concatenate()([shared(L.Dense(8)(L.Flatten()(a))), shared(L.Dense(8)(b))])
    out = L.Dense(5, activation="softmax")(L.Add()([L.Dense(5)(h), L.Dense(5)(h)]))
    return rp.Model([a, b], out, seed=seed)


def _inputs(model, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6, 6, 1)).astype(np.float32)
    if len(model.inputs) == 2:
        return [x, rng.standard_normal((n, 3)).astype(np.float32)]
    return x


def _run_threads(targets):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:      # reported to the main thread
                errors.append(exc)
        return run
    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("make", [_mlp, _with_python_nodes, _graph])
def test_predict_from_several_threads_gives_the_single_thread_answers(make):
    model = make()
    cases = [_inputs(model, n, seed) for seed, n in enumerate([1, 7, 32, 100, 7, 33, 1, 64])]
    # (a batch size changes which GEMM path runs, hence the last bits: the
    # same batch sizes as the expected results)
    expected = {(k, size): model.predict(x, batch_size=size)
                for k, x in enumerate(cases) for size in (16, None)}
    wrong = []

    def worker(offset):
        def run():
            for round_ in range(40):
                k = (offset + round_) % len(cases)
                size = 16 if round_ % 3 else None
                got = model.predict(cases[k], batch_size=size)
                # (1e-6: concurrent kernels may run on smaller OpenMP teams,
                # see below; a clobbered buffer is off by far more)
                if not np.allclose(got, expected[k, size], rtol=1e-6, atol=1e-7):
                    wrong.append(k)
        return run
    _run_threads([worker(i) for i in range(4)])
    assert not wrong, f"{len(wrong)} of 160 predictions were wrong"


def test_evaluate_from_several_threads():
    model = _mlp()
    trainer = rp.Trainer(model, "categorical_crossentropy", "sgd")
    x = _inputs(model, 50, 1)
    y = np.arange(50) % 5
    expected = trainer.evaluate(x, y, batch_size=8)
    results = []
    _run_threads([lambda: results.extend(trainer.evaluate(x, y, batch_size=8) for _ in range(20))
                  for _ in range(3)])
    assert len(results) == 60
    for r in results:
        assert r.keys() == expected.keys()
        assert all(r[k] == pytest.approx(expected[k], rel=1e-6) for k in r)


class _Snapshots(rp.callbacks.Callback):
    """The weights between every two steps (and before the first)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_begin(self, logs=None):
        self.weights.append(self.model.get_weights())

    def on_batch_end(self, batch, logs=None):
        self.weights.append(self.model.get_weights())


@pytest.mark.parametrize("make", [_mlp, _graph])
def test_predict_during_fit_sees_the_weights_between_two_steps(make):
    model = make()
    x = _inputs(model, 96, 2)
    y = np.arange(96) % 5
    probe = _inputs(model, 12, 3)
    snapshots = _Snapshots()
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(0.1, momentum=0.9),
                         callbacks=[snapshots])
    seen = []
    done = threading.Event()

    def fit():
        try:
            trainer.fit(x, y, epochs=4, batch_size=8, verbose=0, seed=0)
        finally:
            done.set()

    def predict():
        while not done.is_set():
            seen.append(model.predict(probe))
    _run_threads([fit, predict])
    assert seen
    # Every prediction is the model's output at one of the step boundaries.
    # (Within 1e-6, not bit for bit: two threads running kernels at once may
    # get smaller OpenMP teams than asked for, and a few reductions sum in
    # another order then; one step moves the outputs by far more.)
    reference = make()
    outputs = []
    for weights in snapshots.weights:
        reference.set_weights(weights)
        outputs.append(reference.predict(probe))
    steps_apart = min(np.abs(a - b).max() for a, b in zip(outputs, outputs[1:]))
    assert steps_apart > 1e-4
    for got in seen:
        assert any(np.allclose(got, out, rtol=1e-6, atol=1e-7) for out in outputs)
    # and the fit trained as it trains alone
    alone = make()
    rp.Trainer(alone, "categorical_crossentropy", rp.optim.SGD(0.1, momentum=0.9)).fit(
        x, y, epochs=4, batch_size=8, verbose=0, seed=0)
    for a, b in zip(alone.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class _Gate(rp.layers.Layer):
    """The identity, whose backward (inside a training step) waits for a signal."""

    def __init__(self, entered=None, release=None, name=None):
        super().__init__(name=name)
        self.entered, self.release = entered, release
        self._x = None

    def forward(self, x, training=False):
        self.check_input(x)
        self._x = x
        return x

    def backward(self, dy, need_dx=True):
        if self.entered is not None:
            self.entered.set()
            self.release.wait(30)
        return dy


def test_predict_waits_for_the_step_in_progress():
    """A predict started while a step runs returns only after the step, with
    the step's new weights (a predict in the middle of the optimizer's writes
    would mix two weight sets)."""
    entered, release = threading.Event(), threading.Event()
    model = rp.Sequential([L.Flatten(), L.Dense(8, activation="relu"), _Gate(entered, release),
                           L.Dense(5, activation="softmax")], input_shape=(6, 6, 1), seed=0)
    x = _inputs(model, 16, 5)
    y = np.arange(16) % 5
    before = model.predict(x)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(0.5))
    result, finished = [], threading.Event()

    def predict():
        entered.wait(30)
        result.append(model.predict(x))
        finished.set()

    def watch():
        entered.wait(30)
        # the step holds the weights: the predict waits
        assert not finished.wait(0.3)
        release.set()
    _run_threads([lambda: trainer.fit(x, y, epochs=1, batch_size=16, verbose=0), predict, watch])
    after = model.predict(x)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(result[0], after)


def test_a_second_fit_from_another_thread_is_refused():
    model = _mlp()
    x = _inputs(model, 32, 4)
    y = np.arange(32) % 5
    started, release = threading.Event(), threading.Event()

    class Hold(rp.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.set()
            release.wait(30)
    first = rp.Trainer(model, "categorical_crossentropy", "sgd", callbacks=[Hold()])
    second = rp.Trainer(model, "categorical_crossentropy", "sgd")
    errors = []

    def other():
        started.wait(30)
        try:
            second.fit(x, y, epochs=1, verbose=0)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            release.set()
    _run_threads([lambda: first.fit(x, y, epochs=1, verbose=0), other])
    assert errors and "already being trained by a fit in another thread" in errors[0]
    # once the first fit is over, the model trains again
    second.fit(x, y, epochs=1, verbose=0)
