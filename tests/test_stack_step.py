"""The one-call training step of Dense + softmax models (stack_step.py):
bit-identical to the layer-by-layer step, rebuilt or abandoned whenever the
model changes under it, and with the same errors."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import stack_step
from retroprop.layers import Dense, Dropout
from retroprop.trainer import NonFiniteError

try:
    from retroprop.backend import cpu
except ImportError:   # the C extension is not built
    cpu = None

pytestmark = pytest.mark.skipif(cpu is None or rp.backend.get_backend() is not cpu,
                                reason="the one-call step is the C backend's")


def _model(dtype=np.float32, acts=("relu", "tanh"), use_bias=True, seed=3, n_in=13, classes=7):
    layers = [Dense(u, activation=a, use_bias=use_bias) for u, a in zip((17, 11), acts)]
    layers.append(Dense(classes, activation="softmax", use_bias=use_bias))
    return rp.Sequential(layers, input_shape=(n_in,), seed=seed, dtype=dtype)


def _data(n=101, n_in=13, classes=7, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)).astype(dtype), rng.integers(0, classes, n)


class _LayerByLayer:
    """Force the layer-by-layer step for one trainer (the reference)."""

    def __init__(self, monkeypatch):
        real = stack_step.qualifies
        self.trainers = set()

        def qualifies(model, loss, backend):
            if any(t.model is model for t in self.trainers):
                return False
            return real(model, loss, backend)
        monkeypatch.setattr(stack_step, "qualifies", qualifies)


def _train_both(monkeypatch, make_model, make_opt, x, y, epochs, batch, callbacks=()):
    """[(model, trainer, history)] trained with the one-call step, then layer by layer."""
    forced = _LayerByLayer(monkeypatch)
    results = []
    for one_call in (True, False):
        model = make_model()
        trainer = rp.Trainer(model, "categorical_crossentropy", make_opt(),
                             metrics=["accuracy"], callbacks=[c() for c in callbacks])
        if not one_call:
            forced.trainers.add(trainer)
        history = trainer.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, seed=5)
        assert bool(trainer._stack_plans) == one_call
        results.append((model, trainer, history))
    return results


def _fit_both(monkeypatch, make_opt, dtype=np.float32, epochs=3, batch=16, callbacks=(),
              y_onehot=False, **model_kw):
    x, y = _data(dtype=dtype)
    if y_onehot:
        y = np.eye(7)[y]
    return _train_both(monkeypatch, lambda: _model(dtype=dtype, **model_kw), make_opt, x, y,
                       epochs, batch, callbacks)


OPTIMIZERS = [
    lambda: rp.optim.SGD(lr=0.05),
    lambda: rp.optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda: rp.optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    lambda: rp.optim.Adam(lr=0.01),
    lambda: rp.optim.AdamW(lr=0.01),
    lambda: rp.optim.RMSprop(lr=0.01, momentum=0.5),
    lambda: rp.optim.Adagrad(lr=0.05),
    lambda: rp.optim.SGD(lr=rp.schedules.ExponentialDecay(0.1, rate=0.2)),
]


def _assert_same_training(results):
    (m1, t1, h1), (m2, t2, h2) = results
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    s1, s2 = t1.optimizer.state_arrays(), t2.optimizer.state_arrays()
    assert s1.keys() == s2.keys()
    for key in s1:
        np.testing.assert_array_equal(s1[key], s2[key])
    assert t1.optimizer.iterations == t2.optimizer.iterations
    assert h1.history == h2.history


@pytest.mark.parametrize("make_opt", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_call_step_is_bit_identical_to_layer_by_layer(monkeypatch, make_opt, dtype):
    # 101 samples at batch 16: a partial last batch, so two plans.
    _assert_same_training(_fit_both(monkeypatch, make_opt, dtype=dtype))


@pytest.mark.parametrize("acts", [("sigmoid", "leaky_relu"), ("elu", "linear"), ("step", "relu")])
def test_every_fused_hidden_activation(monkeypatch, acts):
    _assert_same_training(_fit_both(monkeypatch, OPTIMIZERS[1], acts=acts))


def test_without_bias_and_with_one_hot_targets(monkeypatch):
    _assert_same_training(_fit_both(monkeypatch, OPTIMIZERS[3], use_bias=False))
    _assert_same_training(_fit_both(monkeypatch, OPTIMIZERS[1], y_onehot=True))


def test_single_layer_model(monkeypatch):
    x, y = _data()
    forced = _LayerByLayer(monkeypatch)
    weights = []
    for one_call in (True, False):
        model = rp.Sequential([Dense(7, activation="softmax")], input_shape=(13,), seed=1)
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1), metrics=[])
        if not one_call:
            forced.trainers.add(trainer)
        trainer.fit(x, y, epochs=2, batch_size=32, verbose=0, seed=2)
        assert bool(trainer._stack_plans) == one_call
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


class _ChangeModelMidTraining(rp.callbacks.Callback):
    """Freezes the first layer after batch 2, unfreezes it after batch 4,
    changes a hidden activation after batch 6 and renames a layer after 8."""

    def on_batch_end(self, batch, logs=None):
        model = self.trainer.model
        self.count = getattr(self, "count", 0) + 1
        if self.count == 2:
            model.layers[0].trainable = False
        elif self.count == 4:
            model.layers[0].trainable = True
        elif self.count == 6:
            model.layers[1].activation = rp.activations.get("sigmoid")
        elif self.count == 8:
            model.layers[1].name = "renamed"
        elif self.count == 10:
            model.set_weights([w * 0.5 for w in model.get_weights()])   # in place


def test_changes_between_steps_are_followed(monkeypatch):
    _assert_same_training(_fit_both(monkeypatch, OPTIMIZERS[1], callbacks=[_ChangeModelMidTraining]))


class _AddRegularizer(rp.callbacks.Callback):
    def on_batch_end(self, batch, logs=None):
        if batch == 2 and self.trainer.model.layers[0].kernel_regularizer is None:
            self.trainer.model.layers[0].kernel_regularizer = rp.regularizers.L2(0.01)


def test_a_model_that_stops_qualifying_falls_back(monkeypatch):
    results = _fit_both(monkeypatch, OPTIMIZERS[1], callbacks=[_AddRegularizer])
    assert results[0][1]._stack_ok is False      # dropped after the regularizer appeared
    _assert_same_training(results)


def test_layer_state_after_a_step_is_that_of_forward_and_backward(monkeypatch):
    (m1, _, _), (m2, _, _) = _fit_both(monkeypatch, OPTIMIZERS[0], epochs=1, batch=101)
    for l1, l2 in zip(m1.layers, m2.layers):
        np.testing.assert_array_equal(l1._y, l2._y)
        np.testing.assert_array_equal(l1._x, l2._x)
        assert (l1.logits is None) == (l2.logits is None)
        if l1.logits is not None:
            np.testing.assert_array_equal(l1.logits, l2.logits)
        for name in l1.grads:
            np.testing.assert_array_equal(l1.grads[name], l2.grads[name])


@pytest.mark.parametrize("layers,loss", [
    ([Dense(5, activation="relu", kernel_regularizer=rp.regularizers.L2(0.1)),
      Dense(3, activation="softmax")], "categorical_crossentropy"),
    ([Dense(5, activation="relu"), Dropout(0.5), Dense(3, activation="softmax")],
     "categorical_crossentropy"),
    ([Dense(5, activation="gelu"), Dense(3, activation="softmax")], "categorical_crossentropy"),
    ([Dense(5, activation="relu"), Dense(3, activation="linear")], "mse"),
    ([Dense(5, activation="relu"), Dense(3)], rp.losses.CategoricalCrossentropy(from_logits=True)),
])
def test_other_models_do_not_qualify(layers, loss):
    model = rp.Sequential(layers, input_shape=(4,), seed=0)
    trainer = rp.Trainer(model, loss, "sgd", metrics=[])
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    y = np.arange(8) % 3 if loss != "mse" else np.zeros((8, 3), np.float32)
    trainer.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert not trainer._stack_ok and not trainer._stack_plans


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("lr", [1e36, 3e38])   # a NaN loss at batch 2; an overflowing update
def test_nonfinite_errors_are_those_of_the_layer_by_layer_step(monkeypatch, check_finite, lr):
    x, y = _data()
    x[:, 0] *= 1e4
    forced = _LayerByLayer(monkeypatch)
    outcomes = []
    for one_call in (True, False):
        model = _model()
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=lr),
                             metrics=[], check_finite=check_finite)
        if not one_call:
            forced.trainers.add(trainer)
        with pytest.raises(NonFiniteError) as info:
            trainer.fit(x, y, epochs=5, batch_size=16, verbose=0, seed=5)
        outcomes.append((str(info.value), info.value.epoch, info.value.batch,
                         model.get_weights(), trainer.optimizer.iterations))
    (msg1, e1, b1, w1, i1), (msg2, e2, b2, w2, i2) = outcomes
    assert (msg1, e1, b1, i1) == (msg2, e2, b2, i2)
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_a_refused_step_names_the_parameter_and_writes_nothing():
    model = _model()
    x, y = _data()
    trainer = rp.Trainer(model, "categorical_crossentropy",
                         rp.optim.SGD(lr=0.1, momentum=0.9, weight_decay=10.0), metrics=[])
    trainer.fit(x[:16], y[:16], epochs=1, batch_size=16, verbose=0)
    assert trainer._stack_plans
    # A huge but finite bias: the loss stays finite, its decayed update overflows.
    model.layers[2].params["b"][0] = 3e38
    before = model.get_weights()
    velocity = {k: v.copy() for k, v in trainer.optimizer.velocity.items()}
    with pytest.raises(NonFiniteError, match="parameter dense_2/b would become NaN or Inf"):
        trainer.fit(x[:16], y[:16], epochs=1, batch_size=16, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for key, v in trainer.optimizer.velocity.items():
        np.testing.assert_array_equal(v, velocity[key])
    assert trainer.optimizer.iterations == 1


def _stack_arrays(batch=6, dtype=np.float32):
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((4, 5)).astype(dtype), rng.standard_normal((5, 3)).astype(dtype)]
    b = [np.zeros(5, dtype), np.zeros(3, dtype)]
    dw = [np.empty_like(a) for a in w]
    db = [np.empty_like(a) for a in b]
    ys = [np.empty((batch, 5), dtype), np.empty((batch, 3), dtype)]
    dzs = [np.empty_like(a) for a in ys]
    dxs = [None, np.empty((batch, 5), dtype)]
    logits = np.empty((batch, 3), dtype)
    return w, b, dw, db, ys, dzs, dxs, logits


def test_backend_step_checks_its_arrays():
    w, b, dw, db, ys, dzs, dxs, logits = _stack_arrays()
    acts, params = ["relu", "softmax"], [None, None]
    with pytest.raises(ValueError, match=r"weights\[1\]: 4 inputs, but layer 0 has 5 outputs"):
        cpu.dense_stack([w[0], np.zeros((4, 3), np.float32)], b, acts, params, ys, logits,
                        dweights=dw, dbiases=db, dzs=dzs, dxs=dxs)
    with pytest.raises(ValueError, match="dxs"):
        cpu.dense_stack(w, b, acts, params, ys, logits, dweights=dw, dbiases=db, dzs=dzs,
                        dxs=[None, None])
    with pytest.raises(ValueError, match="activation"):
        cpu.dense_stack(w, b, ["gelu", "softmax"], params, ys, logits, dweights=dw, dbiases=db,
                        dzs=dzs, dxs=dxs)
    with pytest.raises(ValueError, match="all, or none"):
        cpu.dense_stack(w, b, acts, params, ys, logits, dweights=dw)
    stack = cpu.dense_stack(w, b, acts, params, ys, logits, dweights=dw, dbiases=db, dzs=dzs,
                            dxs=dxs)
    grads = dw + db
    args = ("sgd", w + b, grads, [None] * 4, [None] * 4)
    x = np.ones((6, 4), np.float32)
    with pytest.raises(ValueError, match=r"x: expected shape \(6, 4\)"):
        cpu.dense_stack_step(stack, np.ones((5, 4), np.float32), np.zeros(5, np.int64), *args, lr=0.1)
    with pytest.raises(ValueError, match=r"class id 3 out of range \[0, 3\)"):
        cpu.dense_stack_step(stack, x, np.array([0, 1, 2, 3, 0, 0]), *args, lr=0.1)
    with pytest.raises(TypeError, match="dtype"):
        cpu.dense_stack_step(stack, x.astype(np.float64), np.zeros(6, np.int64), *args, lr=0.1)
    status, loss, bad = cpu.dense_stack_step(stack, x, np.zeros(6, np.int64), *args, lr=0.1)
    assert status == 0 and bad == -1 and np.isfinite(loss)
    dw[0].shape = (5, 4)          # reshaped in place: the stack refuses to run
    with pytest.raises(ValueError, match="reshaped in place"):
        cpu.dense_stack_step(stack, x, np.zeros(6, np.int64), *args, lr=0.1)


def test_backend_step_equals_the_separate_kernels():
    w, b, dw, db, ys, dzs, dxs, logits = _stack_arrays(batch=9, dtype=np.float64)
    rng = np.random.default_rng(4)
    x, labels = rng.standard_normal((9, 4)), rng.integers(0, 3, 9)
    w_ref, b_ref = [a.copy() for a in w], [a.copy() for a in b]
    stack = cpu.dense_stack(w, b, ["tanh", "softmax"], [None, None], ys, logits, dweights=dw,
                            dbiases=db, dzs=dzs, dxs=dxs)
    status, loss, _ = cpu.dense_stack_step(stack, x, labels, "sgd", w + b, dw + db, [None] * 4,
                                           [None] * 4, lr=0.5)
    assert status == 0
    # The same step by hand with the separate kernels.
    h = cpu.dense_forward(x, w_ref[0], b_ref[0], "tanh")
    z = np.empty((9, 3))
    p = cpu.dense_forward(h, w_ref[1], b_ref[1], "softmax", logits=z)
    loss_ref, g = cpu.softmax_cross_entropy(z, labels)
    dw1, db1, dh = np.empty((5, 3)), np.empty(3), np.empty((9, 5))
    cpu.dense_backward(h, w_ref[1], z, g, "linear", dw1, db=db1, dx=dh)
    dw0, db0 = np.empty((4, 5)), np.empty(5)
    cpu.dense_backward(x, w_ref[0], h, dh, "tanh", dw0, db=db0)
    assert loss == loss_ref
    np.testing.assert_array_equal(ys[1], p)
    for got, ref, grad in zip(w + b, w_ref + b_ref, (dw0, dw1, db0, db1)):
        np.testing.assert_array_equal(got, ref - 0.5 * grad)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("count", [0, 1, 7, 9, 61])
@pytest.mark.parametrize("width", [4, 1000])
def test_backend_step_gathers_the_next_batch(threads, count, width):
    """next_batch is gather_rows done during the step (with two threads and
    a batch of 64 KiB or more, on the second thread while the top layer runs
    on the first; else after the top layer): the rows arrive, and the step
    computes exactly what it computes without them. Counts: none, one, a
    prime, one more than a batch, more rows than the step's batch."""
    rng = np.random.default_rng(count)
    data = rng.standard_normal((97, width)).astype(np.float32)
    index = rng.integers(0, 97, count)
    x, labels = rng.standard_normal((9, 4)).astype(np.float32), rng.integers(0, 3, 9)
    results = []
    before = cpu.get_num_threads()
    try:
        cpu.set_num_threads(threads)
        for with_gather in (True, False):
            w, b, dw, db, ys, dzs, dxs, logits = _stack_arrays(batch=9)
            stack = cpu.dense_stack(w, b, ["relu", "softmax"], [None, None], ys, logits,
                                    dweights=dw, dbiases=db, dzs=dzs, dxs=dxs)
            out = np.full((count, width), np.nan, np.float32)
            status, loss, _ = cpu.dense_stack_step(
                stack, x, labels, "sgd", w + b, dw + db, [None] * 4, [None] * 4, lr=0.3,
                next_batch=(data, index, out) if with_gather else None)
            assert status == 0
            if with_gather:
                np.testing.assert_array_equal(out, data[index])
            results.append((loss, w + b + dw + db + ys + [logits]))
    finally:
        cpu.set_num_threads(before)
    (loss_a, arrays_a), (loss_b, arrays_b) = results
    assert loss_a == loss_b
    for a, b_ in zip(arrays_a, arrays_b):
        np.testing.assert_array_equal(a, b_)


def test_backend_step_gathers_even_when_the_loss_is_not_finite():
    w, b, dw, db, ys, dzs, dxs, logits = _stack_arrays(batch=6)
    stack = cpu.dense_stack(w, b, ["relu", "softmax"], [None, None], ys, logits, dweights=dw,
                            dbiases=db, dzs=dzs, dxs=dxs)
    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    out = np.zeros((3, 4), np.float32)
    x = np.full((6, 4), np.inf, np.float32)
    status, loss, _ = cpu.dense_stack_step(stack, x, np.zeros(6, np.int64), "sgd", w + b,
                                           dw + db, [None] * 4, [None] * 4, lr=0.1,
                                           next_batch=(data, np.array([9, 0, 4]), out))
    assert status == 1 and not np.isfinite(loss)
    np.testing.assert_array_equal(out, data[[9, 0, 4]])


def test_backend_step_refuses_a_bad_next_batch_before_running():
    w, b, dw, db, ys, dzs, dxs, logits = _stack_arrays(batch=6)
    stack = cpu.dense_stack(w, b, ["relu", "softmax"], [None, None], ys, logits, dweights=dw,
                            dbiases=db, dzs=dzs, dxs=dxs)
    params = w + b
    before = [p.copy() for p in params]
    data = np.ones((10, 4), np.float32)
    x, labels = np.ones((6, 4), np.float32), np.zeros(6, np.int64)

    def step(next_batch):
        return cpu.dense_stack_step(stack, x, labels, "sgd", params, dw + db, [None] * 4,
                                    [None] * 4, lr=0.1, next_batch=next_batch)
    out = np.zeros((2, 4), np.float32)
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        step((data, np.array([1, 10]), out))
    with pytest.raises(TypeError, match="dtype"):
        step((data, np.array([1, 2]), out.astype(np.float64)))
    with pytest.raises(TypeError, match="C-contiguous"):
        step((data, np.array([1, 2]), np.zeros((4, 2), np.float32).T))
    with pytest.raises(ValueError, match="shape"):
        step((data, np.array([1, 2, 3]), out))
    with pytest.raises(ValueError, match="overlaps x"):          # the batch being trained on
        step((data, np.array([1, 2]), x[:2]))
    with pytest.raises(ValueError, match="overlaps x"):          # the rows being read
        step((data, np.array([5, 6]), data[:2]))
    with pytest.raises(ValueError, match="overlaps an array of the stack"):
        step((np.ones((10, 5), np.float32), np.array([0, 1]), ys[0][:2]))
    grad_rows = dw[0].reshape(2, 10)   # a view of dW: written by the step's backward
    with pytest.raises(ValueError, match="overlaps an array of the stack"):
        step((np.ones((3, 10), np.float32), np.array([0, 1]), grad_rows))
    velocities = [np.zeros_like(p) for p in params]
    with pytest.raises(ValueError, match="optimizer state"):
        cpu.dense_stack_step(stack, x, labels, "sgd", params, dw + db, velocities, [None] * 4,
                             lr=0.1, momentum=0.9, next_batch=(np.ones((8, 5), np.float32),
                                                               np.array([0]), velocities[0][:1]))
    for p, p0 in zip(params, before):
        np.testing.assert_array_equal(p, p0)   # no step ran


def test_fit_gathers_each_batch_once(monkeypatch):
    """A shuffled fit through the one-call step copies its first batch by
    itself and every later batch of the epoch during the step before."""
    calls = []
    real = cpu.gather_rows

    def counting(x, index, out=None):
        calls.append(len(index))
        return real(x, index, out)
    monkeypatch.setattr(cpu, "gather_rows", counting)
    x, y = _data()
    trainer = rp.Trainer(_model(), "categorical_crossentropy", rp.optim.SGD(lr=0.05), metrics=[])
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0, seed=1)
    assert calls == [16, 16]     # the first batch of each epoch


def test_wide_inputs_train_identically(monkeypatch):
    """Batches of 64 KiB and more: the next one is copied beside the top layer."""
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((101, 1000)).astype(np.float32), rng.integers(0, 7, 101)
    _assert_same_training(_train_both(monkeypatch, lambda: _model(n_in=1000), OPTIMIZERS[1],
                                      x, y, epochs=2, batch=70))


def test_a_big_output_layer_trains_identically(monkeypatch):
    """batch x classes past the loss kernels' one-thread size: there the next
    batch is not copied beside the top layer (the loss would be summed
    differently), and the training is still that of the layer-by-layer step."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((1100, 5)).astype(np.float32), rng.integers(0, 70, 1100)

    def make_model():
        return rp.Sequential([Dense(8, activation="relu"), Dense(70, activation="softmax")],
                             input_shape=(5,), seed=4)
    _assert_same_training(_train_both(monkeypatch, make_model,
                                      lambda: rp.optim.SGD(lr=0.1, momentum=0.9), x, y,
                                      epochs=2, batch=1000))


# ---------------------------------------------------------------- forward only

def _forward_models(monkeypatch, make):
    """(one-call model, layer-by-layer model): the same weights."""
    real = stack_step.forward_qualifies
    generic = make()
    monkeypatch.setattr(stack_step, "forward_qualifies",
                        lambda model, backend: model is not generic and real(model, backend))
    one_call = make()
    one_call.set_weights(generic.get_weights())
    return one_call, generic


@pytest.mark.parametrize("last", ["softmax", "sigmoid", "linear", "leaky_relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_call_forward_is_bit_identical(monkeypatch, last, dtype):
    def make():
        return rp.Sequential([Dense(17, activation="elu"), Dense(11, activation="relu"),
                              Dense(5, activation=last)], input_shape=(13,), seed=1, dtype=dtype)
    fast, slow = _forward_models(monkeypatch, make)
    rng = np.random.default_rng(2)
    for n in (1, 7, 300, 7):
        x = rng.standard_normal((n, 13)).astype(dtype)
        np.testing.assert_array_equal(fast.forward(x), slow.forward(x))
        np.testing.assert_array_equal(fast.predict(x, batch_size=64), slow.predict(x, batch_size=64))
        for a, b in zip(fast.layers, slow.layers):
            np.testing.assert_array_equal(a._y, b._y)
            assert (a.logits is None) == (b.logits is None)
            if a.logits is not None:
                np.testing.assert_array_equal(a.logits, b.logits)
    assert fast._forward_plans and not slow._forward_plans
    # backward after the one-call forward: the layers hold what it needs
    dy = rng.standard_normal((7, 5)).astype(dtype)
    np.testing.assert_array_equal(fast.backward(dy.copy()), slow.backward(dy.copy()))
    for a, b in zip(fast.layers, slow.layers):
        np.testing.assert_array_equal(a.grads["W"], b.grads["W"])


def test_one_call_forward_follows_changes(monkeypatch):
    def make():
        return rp.Sequential([Dense(9, activation="leaky_relu"), Dense(4, activation="softmax")],
                             input_shape=(6,), seed=4)
    fast, slow = _forward_models(monkeypatch, make)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)

    def same():
        np.testing.assert_array_equal(fast.forward(x), slow.forward(x))
    same()
    for model in (fast, slow):
        model.layers[0].activation.alpha = 0.5        # a parameter changed in place
    same()
    for model in (fast, slow):
        model.layers[0].activation = rp.activations.get("tanh")
    same()
    for model in (fast, slow):                        # an array replaced, not copied into
        model.layers[1].params["b"] = np.full(4, 0.3, np.float32)
    same()
    for model in (fast, slow):                        # no longer qualifies: layer by layer
        model.layers[0].activation = rp.activations.get("gelu")
    same()


def test_one_call_forward_keeps_the_errors_of_the_layers():
    model = rp.Sequential([Dense(4, activation="relu"), Dense(2, activation="softmax")],
                          input_shape=(3,), seed=0)
    model.forward(np.zeros((2, 3), np.float32))
    assert model._forward_plans
    with pytest.raises(ValueError, match=r"Dense .dense. expects input of shape \(N, 3\), got \(2, 5\)"):
        model.forward(np.zeros((2, 5), np.float32))


def test_models_with_other_layers_run_layer_by_layer():
    model = rp.Sequential([Dense(4, activation="relu"), Dropout(0.5), Dense(2, activation="softmax")],
                          input_shape=(3,), seed=0)
    model.forward(np.zeros((2, 3), np.float32))
    assert not model._forward_plans
