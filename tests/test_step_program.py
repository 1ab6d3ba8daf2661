"""Step programs (step.py, csrc/cpu/plan.c): a model's planned step lowered
to C records. Bit-identical to the node-by-node step of the same plan,
rebuilt whenever the model changes under it, with the same errors; and the
binding checks every record's arrays once."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import step as step_module
from retroprop.layers import Dense, Dropout
from retroprop.trainer import NonFiniteError

try:
    from retroprop.backend import cpu
except ImportError:   # the C extension is not built
    cpu = None

pytestmark = pytest.mark.skipif(cpu is None or rp.backend.get_backend() is not cpu,
                                reason="step programs are the C backend's")
L = rp.layers


def _model(dtype=np.float32, acts=("relu", "tanh"), use_bias=True, seed=3, n_in=13, classes=7):
    layers = [Dense(u, activation=a, use_bias=use_bias) for u, a in zip((17, 11), acts)]
    layers.append(Dense(classes, activation="softmax", use_bias=use_bias))
    return rp.Sequential(layers, input_shape=(n_in,), seed=seed, dtype=dtype)


def _data(n=101, n_in=13, classes=7, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)).astype(dtype), rng.integers(0, classes, n)


def _node_by_node(trainer):
    """Make a trainer take the node-by-node step (the reference)."""
    trainer._program_for = lambda xs, targets: None


def _train_both(make_model, make_opt, x, y, epochs, batch, callbacks=(), loss=None,
                metrics=("accuracy",)):
    """[(model, trainer, history)]: trained with step programs, then node by node."""
    results = []
    for program in (True, False):
        model = make_model()
        trainer = rp.Trainer(model, loss or "categorical_crossentropy", make_opt(),
                             metrics=list(metrics), callbacks=[c() for c in callbacks])
        if not program:
            _node_by_node(trainer)
        history = trainer.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, seed=5)
        assert bool(trainer._programs) == program
        results.append((model, trainer, history))
    return results


def _fit_both(make_opt, dtype=np.float32, epochs=3, batch=16, callbacks=(), y_onehot=False,
              **model_kw):
    x, y = _data(dtype=dtype)
    if y_onehot:
        y = np.eye(7)[y]
    return _train_both(lambda: _model(dtype=dtype, **model_kw), make_opt, x, y, epochs, batch,
                       callbacks)


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


def _assert_same_training(results, same_history=True):
    (m1, t1, h1), (m2, t2, h2) = results
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    s1, s2 = t1.optimizer.state_arrays(), t2.optimizer.state_arrays()
    assert s1.keys() == s2.keys()
    for key in s1:
        np.testing.assert_array_equal(s1[key], s2[key])
    assert t1.optimizer.iterations == t2.optimizer.iterations
    if same_history:
        assert h1.history == h2.history
    else:       # a penalty's sum in another order: the last bits of the logged loss
        for key in h1.history:
            np.testing.assert_allclose(h1.history[key], h2.history[key], rtol=1e-12)


@pytest.mark.parametrize("make_opt", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_program_step_is_bit_identical_to_node_by_node(make_opt, dtype):
    # 101 samples at batch 16: a partial last batch, so two programs.
    _assert_same_training(_fit_both(make_opt, dtype=dtype))


@pytest.mark.parametrize("acts", [("sigmoid", "leaky_relu"), ("elu", "linear"), ("step", "relu")])
def test_every_fused_hidden_activation(acts):
    _assert_same_training(_fit_both(OPTIMIZERS[1], acts=acts))


def test_without_bias_and_with_one_hot_targets():
    _assert_same_training(_fit_both(OPTIMIZERS[3], use_bias=False))
    _assert_same_training(_fit_both(OPTIMIZERS[1], y_onehot=True))


def _readme_mlp(dropout=0.0, l2=None):
    reg = None if l2 is None else rp.regularizers.L2(l2)
    layers = [L.Flatten(), L.Dense(32, activation="relu", kernel_regularizer=reg)]
    if dropout:
        layers.append(L.Dropout(dropout, seed=1))
    layers.append(L.Dense(16, activation="relu", kernel_regularizer=reg))
    if dropout:
        layers.append(L.Dropout(dropout, seed=2))
    layers.append(L.Dense(10, activation="softmax", kernel_regularizer=reg))
    return rp.Sequential(layers, input_shape=(6, 6, 1), seed=0)


@pytest.mark.parametrize("variant", ["plain", "dropout", "l2"])
def test_the_readme_mlp_runs_as_one_call_and_trains_identically(variant):
    """Flatten first, accuracy metric, with Dropout or L2: one C call a step,
    no input gradient for the first Dense, the node-by-node weights."""
    rng = np.random.default_rng(1)
    x, y = rng.random((90, 6, 6, 1), dtype=np.float32), rng.integers(0, 10, 90)

    def make():
        return _readme_mlp(dropout=0.2 if variant == "dropout" else 0.0,
                           l2=1e-3 if variant == "l2" else None)
    results = _train_both(make, OPTIMIZERS[1], x, y, epochs=2, batch=32)
    _assert_same_training(results, same_history=variant != "l2")
    program = next(iter(results[0][1]._programs.values()))
    assert len(program.segments) == 1
    backward = [r for r in program.records if r["kind"] == "dense_bwd"]
    assert backward[-1]["a"][7] is None          # the first Dense computes no dx
    assert all(r["a"][7] is not None for r in backward[:-1])
    kinds = [r["kind"] for r in program.records]
    assert kinds.count("accuracy") == 1 and kinds[-1] == "accuracy"
    if variant == "l2":
        assert kinds.count("penalty") == 3
    if variant == "dropout":
        assert kinds.count("dropout_fwd") == 2 and kinds.count("mul") == 2


def test_single_layer_model():
    x, y = _data()

    def make():
        return rp.Sequential([Dense(7, activation="softmax")], input_shape=(13,), seed=1)
    _assert_same_training(_train_both(make, lambda: rp.optim.SGD(lr=0.1), x, y, 2, 32))


def test_a_graph_model_with_python_nodes_trains_identically():
    """Two inputs, a shared layer, a fork, concatenation and a merge in C; a
    BatchNormalization and a PReLU between them run in Python."""
    x, y = _data()

    def make():
        a, b = rp.Input((6,)), rp.Input((7,))
        c = L.Concatenate()([a, b])
        h = L.PReLU()(L.BatchNormalization()(L.Dense(13)(c)))
        shared = L.Dense(8, activation="tanh")
        s = L.Add()([shared(c), shared(h), L.Dense(8)(h)])
        return rp.Model([a, b], L.Dense(7, activation="softmax")(s), seed=3)
    xs = [x[:, :6].copy(), x[:, 6:].copy()]
    results = _train_both(make, OPTIMIZERS[3], xs, y, 3, 16)
    _assert_same_training(results)
    program = next(iter(results[0][1]._programs.values()))
    assert sum(1 for s in program.segments if s[0] == "py") >= 2


class _ChangeModelMidTraining(rp.callbacks.Callback):
    """Freezes the first layer after batch 2, unfreezes it after batch 4,
    changes a hidden activation after batch 6, renames a layer after 8,
    rescales the weights in place after 10 and adds a regularizer after 12."""

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
        elif self.count == 12:
            model.layers[0].kernel_regularizer = rp.regularizers.L2(0.01)


def test_changes_between_steps_are_followed():
    _assert_same_training(_fit_both(OPTIMIZERS[1], callbacks=[_ChangeModelMidTraining]),
                          same_history=False)


def test_a_replaced_array_rebuilds_the_program():
    model = _model()
    x, y = _data()
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(0.1), metrics=[])
    trainer.fit(x[:16], y[:16], epochs=1, batch_size=16, verbose=0)
    first = trainer._programs[(16, ("labels",))]
    model.layers[2].params["b"] = np.full(7, 0.5, np.float32)     # replaced, not copied into
    assert not first.still_valid()
    trainer.fit(x[:16], y[:16], epochs=1, batch_size=16, verbose=0)
    assert trainer._programs[(16, ("labels",))] is not first
    new_optimizer = rp.optim.SGD(0.1)
    trainer.optimizer = new_optimizer
    trainer.fit(x[:16], y[:16], epochs=1, batch_size=16, verbose=0)
    assert trainer._programs[(16, ("labels",))].optimizer is new_optimizer


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("lr", [1e36, 3e38])   # a NaN loss at batch 2; an overflowing update
def test_nonfinite_errors_are_those_of_the_node_by_node_step(check_finite, lr):
    x, y = _data()
    x[:, 0] *= 1e4
    outcomes = []
    for program in (True, False):
        model = _model()
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=lr),
                             metrics=[], check_finite=check_finite)
        if not program:
            _node_by_node(trainer)
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
    assert trainer._programs
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


# ---------------------------------------------------------------- the binding

def _two_layer_program(batch=6, dtype=np.float32, classes=3):
    """A hand-made program: dense relu, dense softmax, the loss and the backward."""
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((4, 5)).astype(dtype), rng.standard_normal((5, classes)).astype(dtype)]
    b = [np.zeros(5, dtype), np.zeros(classes, dtype)]
    dw = [np.empty_like(a) for a in w]
    db = [np.empty_like(a) for a in b]
    h, z, p = (np.empty((batch, c), dtype) for c in (5, classes, classes))
    seed, dz0, dh = np.empty((batch, classes), dtype), np.empty((batch, 5), dtype), \
        np.empty((batch, 5), dtype)
    table = [("input", (batch, 4)), ("labels", batch, classes), w[0], b[0], w[1], b[1], h, z, p,
             seed, dw[0], db[0], dw[1], db[1], dz0, dh]
    records = [
        dict(kind="dense_fwd", a=[0, 2, 3, 6], n=batch, m=4, k=5, act="relu"),
        dict(kind="dense_softmax_fwd", a=[6, 4, 5, 7, 8], n=batch, m=5, k=classes),
        dict(kind="softmax_xent", a=[7, 1, None, 9], n=batch, k=classes),
        dict(kind="dense_bwd", a=[6, 4, 7, 9, 9, 12, 13, 15], n=batch, m=5, k=classes),
        dict(kind="dense_bwd", a=[0, 2, 6, 15, 14, 10, 11, None], n=batch, m=4, k=5, act="relu"),
        dict(kind="check_loss", a=[]),
        dict(kind="optimizer", a=[]),
    ]
    return table, records, dict(w=w, b=b, dw=dw, db=db, h=h, p=p)


def test_the_binding_checks_every_record():
    table, records, _ = _two_layer_program()
    extended = table + [("input", (6, 5))]
    bad = [dict(records[0], m=5), dict(records[0], a=[0, 2, 3]),
           dict(records[0], act="gelu"), dict(records[2], a=[7, 1, 9, 9]),
           dict(records[0], a=[0, 2, 3, 16]), dict(kind="nonsense", a=[]),
           dict(records[0], a=[0, 2, 3, 99]), dict(kind="overlap_gather", a=[], n=5)]
    messages = [r"x must have shape \(6, 5\)", "y is required", "activation",
                "exactly one of labels and targets", "cannot be a per-call array", "unknown kind",
                "outside the table", "must cover the next 5 records"]
    for record, message in zip(bad, messages):
        with pytest.raises((ValueError, TypeError), match=message):
            cpu.program("float32", extended, records[:1] + [record])
    read_only = table[6].copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        cpu.program("float32", table[:6] + [read_only] + table[7:], records)
    with pytest.raises(TypeError, match="float64"):
        cpu.program("float64", table, records)
    program = cpu.program("float32", table, records)
    with pytest.raises(ValueError, match=r"class id 3 out of range \[0, 3\)"):
        program.set_inputs([np.ones((6, 4), np.float32), np.array([0, 1, 2, 3, 0, 0])])
    with pytest.raises(ValueError, match=r"shape \(6, 4\)"):
        program.set_inputs([np.ones((5, 4), np.float32), np.zeros(6, np.int64)])
    with pytest.raises(ValueError, match="the optimizer is not set"):
        program.set_inputs([np.ones((6, 4), np.float32), np.zeros(6, np.int64)])
        program.run(0, len(records))


def test_a_program_equals_the_separate_kernels():
    table, records, arrays = _two_layer_program(batch=9, dtype=np.float64)
    rng = np.random.default_rng(4)
    x, labels = rng.standard_normal((9, 4)), rng.integers(0, 3, 9)
    w, b = arrays["w"], arrays["b"]
    w_ref, b_ref = [a.copy() for a in w], [a.copy() for a in b]
    program = cpu.program("float64", table, records)
    program.set_inputs([x, labels])
    cpu.program_set_optimizer(program, "sgd", w + b, arrays["dw"] + arrays["db"], [None] * 4,
                              [None] * 4, lr=0.5)
    status, loss, _ = program.run(0, len(records), True)
    assert status == 0
    h = cpu.dense_forward(x, w_ref[0], b_ref[0], "relu")
    z = np.empty((9, 3))
    p = cpu.dense_forward(h, w_ref[1], b_ref[1], "softmax", logits=z)
    loss_ref, g = cpu.softmax_cross_entropy(z, labels)
    dw1, db1, dh = np.empty((5, 3)), np.empty(3), np.empty((9, 5))
    cpu.dense_backward(h, w_ref[1], z, g, "linear", dw1, db=db1, dx=dh)
    dw0, db0 = np.empty((4, 5)), np.empty(5)
    cpu.dense_backward(x, w_ref[0], h, dh, "relu", dw0, db=db0)
    assert loss == loss_ref
    np.testing.assert_array_equal(arrays["p"], p)
    for got, ref, grad in zip(w + b, w_ref + b_ref, (dw0, dw1, db0, db1)):
        np.testing.assert_array_equal(got, ref - 0.5 * grad)


def _gathering_program(batch=9):
    table, records, arrays = _two_layer_program(batch=batch)
    records = records[:1] + [dict(kind="overlap_gather", a=[], n=3)] + records[1:]
    return table, records, arrays


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("count", [0, 1, 7, 9, 61])
@pytest.mark.parametrize("width", [4, 1000])
def test_a_program_gathers_the_next_batch(threads, count, width):
    """A gather given to a run is done during it (with two threads and 64 KiB
    or more, beside the top layer; else at the end): the rows arrive, and the
    run computes exactly what it computes without them."""
    rng = np.random.default_rng(count)
    data = rng.standard_normal((97, width)).astype(np.float32)
    index = rng.integers(0, 97, count)
    x, labels = rng.standard_normal((9, 4)).astype(np.float32), rng.integers(0, 3, 9)
    results = []
    before = cpu.get_num_threads()
    try:
        cpu.set_num_threads(threads)
        for with_gather in (True, False):
            table, records, arrays = _gathering_program()
            program = cpu.program("float32", table, records)
            program.set_inputs([x, labels])
            params = arrays["w"] + arrays["b"]
            cpu.program_set_optimizer(program, "sgd", params, arrays["dw"] + arrays["db"],
                                      [None] * 4, [None] * 4, lr=0.3)
            out = np.full((count, width), np.nan, np.float32)
            if with_gather:
                program.set_gather((data, index, out))
            status, loss, _ = program.run(0, len(records), True)
            assert status == 0
            if with_gather:
                assert program.gathered
                np.testing.assert_array_equal(out, data[index])
            results.append((loss, params + arrays["dw"] + arrays["db"] + [arrays["p"]]))
    finally:
        cpu.set_num_threads(before)
    (loss_a, arrays_a), (loss_b, arrays_b) = results
    assert loss_a == loss_b
    for a, b_ in zip(arrays_a, arrays_b):
        np.testing.assert_array_equal(a, b_)


def test_a_program_gathers_even_when_the_loss_is_not_finite():
    table, records, arrays = _gathering_program(batch=6)
    program = cpu.program("float32", table, records)
    program.set_inputs([np.full((6, 4), np.inf, np.float32), np.zeros(6, np.int64)])
    cpu.program_set_optimizer(program, "sgd", arrays["w"] + arrays["b"],
                              arrays["dw"] + arrays["db"], [None] * 4, [None] * 4, lr=0.1)
    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    out = np.zeros((3, 4), np.float32)
    program.set_gather((data, np.array([9, 0, 4]), out))
    status, loss, _ = program.run(0, len(records), True)
    assert status == 1 and not np.isfinite(loss)
    np.testing.assert_array_equal(out, data[[9, 0, 4]])


def test_a_program_refuses_a_bad_next_batch_before_running():
    table, records, arrays = _gathering_program(batch=6)
    program = cpu.program("float32", table, records)
    params = arrays["w"] + arrays["b"]
    before = [p.copy() for p in params]
    x = np.ones((6, 4), np.float32)
    program.set_inputs([x, np.zeros(6, np.int64)])
    cpu.program_set_optimizer(program, "sgd", params, arrays["dw"] + arrays["db"], [None] * 4,
                              [None] * 4, lr=0.1)
    data = np.ones((10, 4), np.float32)
    out = np.zeros((2, 4), np.float32)
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        program.set_gather((data, np.array([1, 10]), out))
    with pytest.raises(TypeError, match="dtype"):
        program.set_gather((data, np.array([1, 2]), out.astype(np.float64)))
    with pytest.raises(ValueError, match="shape"):
        program.set_gather((data, np.array([1, 2, 3]), out))
    with pytest.raises(ValueError, match="overlaps an input"):        # the batch trained on
        program.set_gather((data, np.array([1, 2]), x[:2]))
    with pytest.raises(ValueError, match="out overlaps x"):           # the rows being read
        program.set_gather((data, np.array([5, 6]), data[:2]))
    with pytest.raises(ValueError, match="overlaps an array of the program"):
        program.set_gather((np.ones((10, 5), np.float32), np.array([0, 1]), arrays["h"][:2]))
    grad_rows = arrays["dw"][0].reshape(2, 10)   # a view of dW: written by the backward
    with pytest.raises(ValueError, match="overlaps an array of the program"):
        program.set_gather((np.ones((3, 10), np.float32), np.array([0, 1]), grad_rows))
    for p, p0 in zip(params, before):
        np.testing.assert_array_equal(p, p0)   # nothing ran


def test_fit_gathers_each_batch_once(monkeypatch):
    """A shuffled fit through step programs copies its first batch by itself
    and every later batch of the epoch during the step before."""
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


def test_wide_inputs_train_identically():
    """Batches of 64 KiB and more: the next one is copied beside the top layer."""
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((101, 1000)).astype(np.float32), rng.integers(0, 7, 101)
    results = _train_both(lambda: _model(n_in=1000), OPTIMIZERS[1], x, y, epochs=2, batch=70)
    _assert_same_training(results)
    program = results[0][1]._programs[(70, ("labels",))]
    assert [r["kind"] for r in program.records][2:6] == ["overlap_gather", "dense_softmax_fwd",
                                                         "softmax_xent", "dense_bwd"]


def test_a_big_output_layer_trains_identically():
    """batch x classes past the loss kernels' one-thread size: there the next
    batch is not copied beside the top layer (the loss would be summed
    differently), and the training is still that of the node-by-node step."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((1100, 5)).astype(np.float32), rng.integers(0, 70, 1100)

    def make_model():
        return rp.Sequential([Dense(8, activation="relu"), Dense(70, activation="softmax")],
                             input_shape=(5,), seed=4)
    results = _train_both(make_model, lambda: rp.optim.SGD(lr=0.1, momentum=0.9), x, y,
                          epochs=2, batch=1000)
    _assert_same_training(results)
    program = results[0][1]._programs[(1000, ("labels",))]
    assert "overlap_gather" not in [r["kind"] for r in program.records]


# ---------------------------------------------------------------- inference programs

def _inference_pair(make):
    """(model running inference programs, model running node by node): same weights."""
    fast, slow = make(), make()
    slow.set_weights(fast.get_weights())
    return fast, slow


def _forward_slow(model, x):
    xs = model.prepare_inputs(x)
    return model._plan(xs[0].shape[0], False)._forward_nodes(xs)[0]


@pytest.mark.parametrize("last", ["softmax", "sigmoid", "linear", "leaky_relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_program_is_bit_identical(last, dtype):
    def make():
        return rp.Sequential([L.Flatten(), Dense(17, activation="elu"), Dense(11, activation="relu"),
                              Dropout(0.5), Dense(5, activation=last)], input_shape=(13, 1),
                             seed=1, dtype=dtype)
    fast, slow = _inference_pair(make)
    rng = np.random.default_rng(2)
    for n in (1, 7, 300, 7):
        x = rng.standard_normal((n, 13, 1)).astype(dtype)
        np.testing.assert_array_equal(fast.forward(x), _forward_slow(slow, x))
        np.testing.assert_array_equal(fast.predict(x, batch_size=64),
                                      slow.predict(x, batch_size=64))
        assert fast._plans[(n, False)]._program
    # backward after an inference forward in C: the layers are run again first
    dy = rng.standard_normal((7, 5)).astype(dtype)
    fast.forward(x[:7])
    _forward_slow(slow, x[:7])
    slow._last_plan = slow._plan(7, False)
    np.testing.assert_array_equal(fast.backward(dy.copy()), slow.backward(dy.copy()))
    for a, b in zip(fast.layers, slow.layers):
        for name in a.grads:
            np.testing.assert_array_equal(a.grads[name], b.grads[name])


def test_inference_program_follows_changes():
    def make():
        return rp.Sequential([Dense(9, activation="leaky_relu"), Dense(4, activation="softmax")],
                             input_shape=(6,), seed=4)
    model = make()
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)

    def same():
        np.testing.assert_array_equal(model.forward(x), _forward_slow(model, x))
    same()
    model.layers[0].activation.alpha = 0.5          # a parameter changed in place
    same()
    model.layers[0].activation = rp.activations.get("tanh")
    same()
    model.layers[1].params["b"] = np.full(4, 0.3, np.float32)   # replaced, not copied into
    same()
    model.layers[0].activation = rp.activations.get("gelu")     # no C form: node by node
    same()


def test_inference_program_keeps_the_errors_of_the_layers():
    model = rp.Sequential([Dense(4, activation="relu"), Dense(2, activation="softmax")],
                          input_shape=(3,), seed=0)
    model.forward(np.zeros((2, 3), np.float32))
    assert model._plans[(2, False)]._program
    with pytest.raises(ValueError, match=r"Dense .dense. expects input of shape \(N, 3\), "
                                         r"got \(2, 5\)"):
        model.forward(np.zeros((2, 5), np.float32))


def test_watch_sees_what_a_program_baked_in():
    layer = Dense(3, activation="relu")
    layer.build((4,), np.float32, np.random.default_rng(0))
    watched = step_module.watch(layer, training=True)
    assert step_module.unchanged(watched)
    for change in (lambda: setattr(layer, "trainable", False),
                   lambda: setattr(layer, "kernel_regularizer", rp.regularizers.L1(0.1)),
                   lambda: layer.grads.__setitem__("W", np.zeros((4, 3), np.float32)),
                   lambda: setattr(layer.activation, "alpha", 0.3) if False else
                   setattr(layer, "activation", rp.activations.get("relu"))):
        state = dict(layer.__dict__)
        grads = dict(layer.grads)
        change()
        assert not step_module.unchanged(watched)
        layer.__dict__.update(state)
        layer.grads.clear()
        layer.grads.update(grads)
        assert step_module.unchanged(watched)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "elu"])
def test_an_activation_layer_after_dense_or_conv_is_fused_into_it(activation):
    """Dense(linear) + Activation(a) and Conv2D + Activation(a), the output read
    by nothing else: one record with the fused activation; the training matches
    the same model written with activation=a on the layer."""
    def make(fused_by_hand):
        act = activation if fused_by_hand else None
        layers = [L.Conv2D(3, 3, activation=act)] + ([] if fused_by_hand else
                                                     [L.Activation(activation)])
        layers += [L.Flatten(), L.Dense(8, activation=act)] + ([] if fused_by_hand else
                                                              [L.Activation(activation)])
        layers += [L.Dense(4), L.Activation("softmax")]
        return rp.Sequential(layers, input_shape=(5, 5, 2), seed=3)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 5, 5, 2)).astype(np.float32), rng.integers(0, 4, 40)
    results = []
    for by_hand in (True, False):
        model = make(by_hand)
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(0.1), metrics=[])
        trainer.fit(x, y, epochs=2, batch_size=20, verbose=0, seed=1)
        program = trainer._programs[(20, ("labels",))]
        kinds = [r["kind"] for r in program.records]
        assert "act_fwd" not in kinds and kinds.count("dense_softmax_fwd") == 1
        assert [r["act"] for r in program.records if r["kind"] == "conv_fwd"] == [activation]
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bit_generator", ["pcg64", "mt19937"])
def test_dropout_masks_are_the_layers_own_draws(threads, bit_generator):
    """The dropout record draws the layer's generator as Generator.random does:
    PCG64 inline (split over threads past 32768 elements by jumping ahead),
    another bit generator through its next_double; the training is the
    node-by-node one, and the generator ends in the same state."""
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((300, 40)).astype(np.float32), rng.integers(0, 5, 300)

    def make():
        model = rp.Sequential([Dense(300, activation="relu"), Dropout(0.3, seed=4),
                               Dense(5, activation="softmax")], input_shape=(40,), seed=2)
        if bit_generator == "mt19937":
            model.layers[1]._rng = np.random.Generator(np.random.MT19937(4))
        return model
    before = cpu.get_num_threads()
    try:
        cpu.set_num_threads(threads)
        results = _train_both(make, OPTIMIZERS[1], x, y, epochs=2, batch=128)
    finally:
        cpu.set_num_threads(before)
    _assert_same_training(results)
    (m1, _, _), (m2, _, _) = results
    np.testing.assert_array_equal(m1.layers[1]._rng.random(5), m2.layers[1]._rng.random(5))


def test_a_model_of_two_inputs_gathers_both_next_batches_during_the_step(monkeypatch):
    calls = []
    real = cpu.gather_rows

    def counting(x, index, out=None):
        calls.append(len(index))
        return real(x, index, out)
    monkeypatch.setattr(cpu, "gather_rows", counting)
    rng = np.random.default_rng(8)
    xa, xb = rng.standard_normal((100, 300)).astype(np.float32), \
        rng.standard_normal((100, 200)).astype(np.float32)
    y = rng.integers(0, 3, 100)

    def make():
        a, b = rp.Input((300,)), rp.Input((200,))
        h = L.Dense(16, activation="relu")(L.Concatenate()([a, b]))
        return rp.Model([a, b], L.Dense(3, activation="softmax")(h), seed=1)
    results = _train_both(make, OPTIMIZERS[1], [xa, xb], y, epochs=2, batch=60)
    _assert_same_training(results)
    # program: each input's first batch of each epoch by itself; node by node: every batch
    assert calls[:4] == [60, 60, 60, 60] and len(calls) == 4 + 2 * 2 * 2
    program = results[0][1]._programs[(60, ("labels",))]
    assert "overlap_gather" in [r["kind"] for r in program.records]
