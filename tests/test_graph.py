"""Computational graphs: rp.Input, rp.Model, merge layers, rp.ops, rp.grad.

The course's worked examples (docs/GRAPH.md) are asserted number by number;
every merge layer and op is checked against a NumPy forward and against
finite differences (float64), alone and inside graph models with forks,
shared layers and concatenations (rp.gradcheck)."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import ops
from retroprop.gradcheck import relative_error

L = rp.layers


# ----------------------------------------------------------------------------- the course

def test_course_example_sum_times_product():
    """f(x, y, z) = (x + y) z at x = -2, y = 5, z = -4."""
    x, y, z = rp.Input(()), rp.Input(()), rp.Input(())
    q = x + y
    f = q * z
    values = {x: [-2.0], y: [5.0], z: [-4.0]}
    model = rp.Model([x, y, z], [q, f])
    q_value, f_value = model.predict([[-2.0], [5.0], [-4.0]])
    assert q_value.tolist() == [3.0] and f_value.tolist() == [-12.0]
    dfdx, dfdy, dfdz, dfdq = rp.grad(f, [x, y, z, q], values)
    assert dfdx.tolist() == [-4.0]       # dq/dx * df/dq = 1 * z
    assert dfdy.tolist() == [-4.0]
    assert dfdz.tolist() == [3.0]        # q
    assert dfdq.tolist() == [-4.0]       # z


def test_course_example_fork_gradients_add():
    """f = (u + v) w at u = 2, v = 3, w = 4: df/du = df/dv = 4, df/dw = 5."""
    u, v, w = rp.Input(()), rp.Input(()), rp.Input(())
    f = (u + v) * w
    dfdu, dfdv, dfdw = rp.grad(f, [u, v, w], {u: [2.0], v: [3.0], w: [4.0]})
    assert (dfdu.tolist(), dfdv.tolist(), dfdw.tolist()) == ([4.0], [4.0], [5.0])
    # The same value used twice: g = u * u + u, dg/du = 2u + 1 = 5 (gradients add at forks).
    g = u * u + u
    assert rp.grad(g, u, [2.0]).tolist() == [5.0]


def test_course_example_relu_neuron():
    """f = w3 ReLU(w1 x1 + w2 x2 + b) with every value an input of the graph."""
    names = ["x1", "x2", "w1", "w2", "b", "w3"]
    x1, x2, w1, w2, b, w3 = (rp.Input((), name=n) for n in names)
    z = w1 * x1 + w2 * x2 + b
    h = L.Activation("relu")(z)
    f = w3 * h
    values = dict(zip([x1, x2, w1, w2, b, w3], ([-1.0], [-2.0], [2.0], [-3.0], [-3.0], [-2.0])))
    model = rp.Model([x1, x2, w1, w2, b, w3], [z, h, f])
    z_v, h_v, f_v = model.predict({n: values[t] for n, t in zip(names, [x1, x2, w1, w2, b, w3])})
    assert (z_v.tolist(), h_v.tolist(), f_v.tolist()) == ([1.0], [1.0], [-2.0])
    grads = rp.grad(f, [x1, x2, w1, w2, b, w3], values)
    # df/dh = w3 = -2; ReLU passes it (z > 0); then the products swap their factors.
    assert [g.tolist() for g in grads] == [[-4.0], [6.0], [2.0], [4.0], [-2.0], [1.0]]
    # Below zero the ReLU gate blocks every gradient but w3's (whose is ReLU(z) = 0).
    values[b] = [-5.0]
    grads = rp.grad(f, [x1, x2, w1, w2, b, w3], values)
    assert [g.tolist() for g in grads] == [[0.0], [0.0], [0.0], [0.0], [0.0], [0.0]]


def test_course_example_sigmoid_gate():
    """A sigmoid neuron f = sigma(w0 x0 + w1 x1 + w2) at w = (2, -3, -3), x = (-1, -2):
    w.x + b = 1, f = 0.73, and the gate passes back sigma'(1) = f (1 - f) ~ 0.20."""
    x0, x1, w0, w1, w2 = (rp.Input(()) for _ in range(5))
    z = w0 * x0 + w1 * x1 + w2
    f = L.Activation("sigmoid")(z)
    values = {x0: [-1.0], x1: [-2.0], w0: [2.0], w1: [-3.0], w2: [-3.0]}
    gate = rp.grad(f, z, values)[0]
    assert gate == pytest.approx(0.19661193, abs=1e-8)
    assert round(float(gate), 2) == 0.20
    grads = rp.grad(f, [w0, x0, w1, x1, w2], values)
    np.testing.assert_allclose([g[0] for g in grads],
                               [-0.19661193, 0.39322387, -0.39322387, -0.58983580, 0.19661193],
                               rtol=1e-7)


# ----------------------------------------------------------------------------- NumPy references

def _numeric_grad(fn, arrays, eps=1e-6):
    """Central differences of the scalar fn() w.r.t. each array (in place, restored)."""
    out = []
    for arr in arrays:
        g = np.zeros_like(arr)
        flat, gflat = arr.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + eps
            plus = fn()
            flat[i] = keep - eps
            minus = fn()
            flat[i] = keep
            gflat[i] = (plus - minus) / (2 * eps)
        out.append(g)
    return out


MERGES = [
    (lambda: L.Add(), 3, lambda xs: xs[0] + xs[1] + xs[2]),
    (lambda: L.Subtract(), 2, lambda xs: xs[0] - xs[1]),
    (lambda: L.Multiply(), 3, lambda xs: xs[0] * xs[1] * xs[2]),
    (lambda: L.Maximum(), 3, lambda xs: np.maximum(np.maximum(xs[0], xs[1]), xs[2])),
    (lambda: ops.Divide(), 2, lambda xs: xs[0] / xs[1]),
]


@pytest.mark.parametrize("make,count,reference", MERGES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4)])
def test_merge_layers_against_numpy_and_finite_differences(make, count, reference, shape):
    rng = np.random.default_rng(len(shape) * 10 + count)
    xs = [rng.standard_normal((4,) + shape) for _ in range(count)]
    if count == 2:
        xs[1] = np.where(np.abs(xs[1]) < 0.3, 0.7, xs[1])      # no division near 0
    layer = make()
    layer.build([shape] * count, np.float64, rng)
    y = layer.forward(xs)
    np.testing.assert_allclose(y, reference(xs), rtol=1e-13, atol=1e-15)
    weights = rng.standard_normal(y.shape)
    dxs = layer.backward(weights, need_dx=True)

    def objective():
        return float(np.sum(layer.forward(xs) * weights))
    numeric = _numeric_grad(objective, xs)
    for dx, num in zip(dxs, numeric):
        assert relative_error(dx, num) < 1e-6
    # Gradients nobody needs are not computed.
    partial = layer.backward(weights, need_dx=[True] + [False] * (count - 1))
    assert partial[0] is not None and all(d is None for d in partial[1:])


@pytest.mark.parametrize("axis,shapes", [(-1, [(3,), (5,), (1,)]), (1, [(2, 3), (4, 3)]),
                                         (2, [(2, 3), (2, 1)]), (-2, [(2, 3, 4), (2, 5, 4)]), (-3, [(2, 3, 4), (5, 3, 4)])])
def test_concatenate_against_numpy_and_finite_differences(axis, shapes):
    rng = np.random.default_rng(len(shapes[0]))
    xs = [rng.standard_normal((3,) + s) for s in shapes]
    layer = L.Concatenate(axis=axis)
    layer.build(shapes, np.float64, rng)
    y = layer.forward(xs)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=axis))
    weights = rng.standard_normal(y.shape)
    dxs = layer.backward(weights)
    numeric = _numeric_grad(lambda: float(np.sum(layer.forward(xs) * weights)), xs)
    for dx, num in zip(dxs, numeric):
        assert dx.flags.c_contiguous
        assert relative_error(dx, num) < 1e-6


UNARY = [
    (ops.Negative, lambda x: -x, False),
    (ops.Exp, np.exp, False),
    (ops.Log, np.log, True),
    (ops.Sin, np.sin, False),
    (ops.Cos, np.cos, False),
    (lambda: ops.Scalar("add_scalar", 2.5), lambda x: x + 2.5, False),
    (lambda: ops.Scalar("rsub_scalar", 2.5), lambda x: 2.5 - x, False),
    (lambda: ops.Scalar("mul_scalar", -1.5), lambda x: -1.5 * x, False),
    (lambda: ops.Scalar("div_scalar", 4.0), lambda x: x / 4.0, False),
    (lambda: ops.Scalar("rdiv_scalar", 3.0), lambda x: 3.0 / x, True),
    (lambda: ops.Scalar("max_scalar", 0.1), lambda x: np.maximum(x, 0.1), False),
    (lambda: ops.Sum(axis=-1), lambda x: x.sum(axis=-1), False),
    (lambda: ops.Sum(), lambda x: x.sum(axis=(1, 2)), False),
    (lambda: ops.Mean(axis=1, keepdims=True), lambda x: x.mean(axis=1, keepdims=True), False),
    (lambda: ops.Mean(axis=(1, 2)), lambda x: x.mean(axis=(1, 2)), False),
    (lambda: L.Reshape((6, -1)), lambda x: x.reshape(len(x), 6, 2), False),
]


@pytest.mark.parametrize("make,reference,positive", UNARY)
def test_ops_against_numpy_and_finite_differences(make, reference, positive):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 4))
    if positive:
        x = np.abs(x) + 0.5
    layer = make()
    layer.build((3, 4), np.float64, rng)
    y = layer.forward(x)
    np.testing.assert_allclose(y, reference(x), rtol=1e-14, atol=1e-15)
    assert y.shape[1:] == layer.output_shape
    weights = rng.standard_normal(y.shape)
    dx = layer.backward(weights)
    numeric, = _numeric_grad(lambda: float(np.sum(layer.forward(x) * weights)), [x])
    assert relative_error(dx, numeric) < 1e-6


@pytest.mark.parametrize("shapes", [((3, 4), (4, 2)), ((4,), (4, 3)), ((3, 4), (4,)), ((5,), (5,))])
def test_matmul_against_numpy_and_finite_differences(shapes):
    rng = np.random.default_rng(7)
    a, b = (rng.standard_normal((3,) + s) for s in shapes)
    layer = ops.MatMul()
    layer.build(list(shapes), np.float64, rng)
    y = layer.forward([a, b])
    np.testing.assert_allclose(y, np.stack([np.matmul(a[i], b[i]) for i in range(3)]),
                               rtol=1e-13)
    weights = rng.standard_normal(y.shape)
    da, db = layer.backward(weights)
    na, nb = _numeric_grad(lambda: float(np.sum(layer.forward([a, b]) * weights)), [a, b])
    assert relative_error(da, na) < 1e-6 and relative_error(db, nb) < 1e-6


def test_operators_record_the_right_ops():
    a, b = rp.Input((3,)), rp.Input((3,))
    graph = [a + b, a - b, a * b, a / b, -a, a + 1, 1 + a, a - 1, 1 - a, 2 * a, a * 2, a / 2,
             2 / a, ops.exp(a), ops.log(a), ops.sin(a), ops.cos(a), ops.maximum(a, b),
             ops.maximum(a, 0.5), ops.sum(a), ops.mean(a, axis=-1, keepdims=True)]
    model = rp.Model([a, b], graph, dtype="float64")
    rng = np.random.default_rng(0)
    av, bv = rng.random((4, 3)) + 0.5, rng.random((4, 3)) + 0.5
    expected = [av + bv, av - bv, av * bv, av / bv, -av, av + 1, 1 + av, av - 1, 1 - av, 2 * av,
                av * 2, av / 2, 2 / av, np.exp(av), np.log(av), np.sin(av), np.cos(av),
                np.maximum(av, bv), np.maximum(av, 0.5), av.sum(axis=1),
                av.mean(axis=-1, keepdims=True)]
    for got, want in zip(model.predict([av, bv]), expected):
        np.testing.assert_allclose(got, want, rtol=1e-14)
    # numpy arrays on the left hand the operation to the symbolic tensor
    assert isinstance(np.float64(2.0) * a, rp.SymbolicTensor)


def test_layers_run_eagerly_on_arrays():
    dense = L.Dense(2, activation="relu")
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    y1 = dense(x)
    assert dense.built and dense.input_shape == (4,) and y1.shape == (3, 2)
    y2 = dense(x * 2)
    assert not np.shares_memory(y1, y2)                 # a call returns a copy
    np.testing.assert_allclose(y1, np.maximum(x @ dense.params["W"] + dense.params["b"], 0),
                               rtol=1e-6)
    np.testing.assert_array_equal(L.Add()([np.ones((2, 3)), np.ones((2, 3))]), np.full((2, 3), 2.0))
    np.testing.assert_allclose(ops.exp(np.zeros((1, 2))), np.ones((1, 2)))


# ----------------------------------------------------------------------------- graph models

def _graph_model(dtype="float64", seed=0):
    """Two inputs, a shared layer, a fork, a concatenation and every merge."""
    a, b = rp.Input((3,), name="a"), rp.Input((3,), name="b")
    shared = L.Dense(4, activation="tanh", name="shared")
    ha, hb = shared(a), shared(b)
    c = L.Concatenate()([ha, hb])
    d = L.Dense(5, activation="sigmoid")(c)
    e = L.Add()([d, L.Dense(5)(c)])
    s = L.Subtract()([L.Multiply()([e, d]), L.Maximum()([e, d])])
    out = L.Dense(3, activation="softmax", name="out")(s)
    return rp.Model([a, b], out, dtype=dtype, seed=seed), shared


def _data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, 3)), rng.standard_normal((n, 3))], rng.integers(0, 3, n)


def test_gradcheck_on_a_graph_with_fork_shared_layer_concatenate_and_every_merge():
    model, _ = _graph_model()
    x, y = _data()
    worst, details = rp.gradcheck(model, x, y, return_details=True)
    assert worst < 1e-6
    assert set(details) >= {"shared/W", "shared/b", "out/W", "input:a", "input:b"}


def test_gradcheck_with_ops_and_two_outputs():
    x = rp.Input((4,), name="x")
    h = L.Dense(3, activation="tanh")(x)
    g = ops.exp(-h) / 2 + ops.sin(h) * ops.cos(h) - 1.5 / (h * h + 1)
    m = ops.mean(h, axis=-1, keepdims=True)
    out1 = L.Dense(2, activation="softmax", name="cls")(g)
    out2 = L.Dense(1, name="reg")(L.Concatenate()([g, h, m]))
    model = rp.Model(x, [out1, out2], dtype="float64", seed=1)
    rng = np.random.default_rng(1)
    xv = rng.standard_normal((5, 4))
    y = {"cls": rng.integers(0, 2, 5), "reg": rng.standard_normal((5, 1))}
    worst = rp.gradcheck(model, xv, y, loss={"cls": "categorical_crossentropy", "reg": "mse"},
                         loss_weights=[1.0, 0.5])
    assert worst < 1e-6


def test_shared_layer_gradients_are_the_sum_over_its_calls():
    a, b = rp.Input((3,)), rp.Input((3,))
    shared = L.Dense(2, use_bias=False)
    model = rp.Model([a, b], L.Add()([shared(a), shared(b)]), dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    av, bv = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    model.forward([av, bv])
    dy = rng.standard_normal((4, 2))
    model.backward(dy)
    # y = (a + b) W, so dW = (a + b)^T dy
    np.testing.assert_allclose(shared.grads["W"], (av + bv).T @ dy, rtol=1e-12)
    assert len(model.layers) == 2 and model.count_params() == 6
    assert [name for name, _, _ in model.named_parameters()] == [f"{shared.name}/W"]


def test_a_layer_used_at_two_places_in_a_chain_trains_like_the_unrolled_math():
    """x -> D -> D (the same Dense twice): one weight matrix, gradients of both uses."""
    x = rp.Input((3,))
    dense = L.Dense(3, activation="tanh", name="twice")
    model = rp.Model(x, dense(dense(x)), dtype="float64", seed=2)
    rng = np.random.default_rng(2)
    xv = rng.standard_normal((5, 3))
    y = rng.standard_normal((5, 3))
    assert rp.gradcheck(model, xv, y, loss="mse") < 1e-6
    w, b = dense.params["W"], dense.params["b"]
    np.testing.assert_allclose(model.predict(xv), np.tanh(np.tanh(xv @ w + b) @ w + b),
                               rtol=1e-13)


def test_graph_model_forward_matches_numpy():
    model, shared = _graph_model()
    x, _ = _data()
    p = {layer.name: layer.params for layer in model.layers}
    names = [layer.name for layer in model.layers]

    def dense(h, name, act=lambda z: z):
        return act(h @ p[name]["W"] + p[name]["b"])
    ha = dense(x[0], "shared", np.tanh)
    hb = dense(x[1], "shared", np.tanh)
    c = np.concatenate([ha, hb], axis=1)
    d = dense(c, names[2], lambda z: 1 / (1 + np.exp(-z)))
    e = d + dense(c, names[3])
    s = e * d - np.maximum(e, d)
    z = dense(s, "out")
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12)
    np.testing.assert_allclose(model.predict({"b": x[1], "a": x[0]}), expected, rtol=1e-12)


def test_flatten_first_computes_no_first_layer_input_gradient(monkeypatch):
    """Gradients flow only where needed: behind Flatten nothing needs dx."""
    model = rp.Sequential([L.Flatten(), L.Dense(8, activation="relu"),
                           L.Dense(3, activation="softmax")], input_shape=(4, 4, 1), seed=0)
    backend = model.backend
    calls = []
    real = backend.dense_backward

    def spy(x, w, y, dy, activation, dw, db=None, dx=None, **kw):
        calls.append((w.shape, dx is None))
        return real(x, w, y, dy, activation, dw, db=db, dx=dx, **kw)
    monkeypatch.setattr(backend, "dense_backward", spy)
    x = np.random.default_rng(0).standard_normal((6, 4, 4, 1)).astype(np.float32)
    y = np.arange(6) % 3
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(0.1), metrics=[])
    monkeypatch.setattr(trainer, "_program_for", lambda xs, ts: None)   # node by node
    trainer.fit(x, y, epochs=1, batch_size=6, verbose=0)
    assert calls == [((8, 3), False), ((16, 8), True)]
    # model.backward asks for the input gradient explicitly: then it is computed
    calls.clear()
    model.forward(x, training=True)
    dx = model.backward(np.ones((6, 3), np.float32))
    assert calls[-1] == ((16, 8), False) and dx.shape == x.shape


def test_frozen_layers_compute_no_weight_gradient_in_training():
    model = rp.Sequential([L.Dense(4, activation="relu"), L.Dense(2, activation="softmax")],
                          input_shape=(3,), seed=0)
    model.layers[0].trainable = False
    plan = model._plan(5, True)
    steps = [step.layer.name for step, _ in plan.schedule((), "trainable")]
    assert steps == [model.layers[1].name]
    assert plan.schedule((), "trainable")[0][1] == [False]
    model.layers[0].trainable = True     # the schedule follows the flag
    assert [s.layer.name for s, _ in plan.schedule((), "trainable")] == \
        [model.layers[1].name, model.layers[0].name]


def test_trainer_fits_a_model_of_two_inputs_and_two_outputs():
    rng = np.random.default_rng(4)
    n = 64
    xa, xb = rng.standard_normal((n, 5)).astype(np.float32), rng.standard_normal((n, 2)).astype(
        np.float32)
    labels = (xa[:, 0] + xb[:, 1] > 0).astype(np.int64)
    target = (xa[:, :1] - xb[:, :1]).astype(np.float32)
    a, b = rp.Input((5,), name="a"), rp.Input((2,), name="b")
    h = L.Dense(16, activation="relu")(L.Concatenate()([a, b]))
    cls = L.Dense(2, activation="softmax", name="cls")(h)
    reg = L.Dense(1, name="reg")(h)
    model = rp.Model([a, b], [cls, reg], seed=0)
    trainer = rp.Trainer(model, {"cls": "categorical_crossentropy", "reg": "mse"},
                         rp.optim.Adam(0.01), metrics=["accuracy"], loss_weights={"cls": 1.0,
                                                                                 "reg": 0.5})
    before = trainer.evaluate({"a": xa, "b": xb}, {"cls": labels, "reg": target})
    history = trainer.fit({"a": xa, "b": xb}, [labels, target], epochs=30, batch_size=16,
                          verbose=0, validation_split=0.25)
    logs = history.history
    assert {"loss", "cls_loss", "reg_loss", "cls_accuracy", "val_loss", "val_reg_loss"} <= set(logs)
    after = trainer.evaluate([xa, xb], [labels, target])
    assert after["loss"] < 0.5 * before["loss"]
    assert after["loss"] == pytest.approx(after["cls_loss"] + 0.5 * after["reg_loss"], rel=1e-9)
    # the total is the weighted sum, as computed by hand
    p, r = model.predict([xa, xb])
    ce = -np.mean(np.log(np.clip(p[np.arange(n), labels], 1e-7, 1)))
    assert after["cls_loss"] == pytest.approx(ce, rel=1e-5)
    assert after["reg_loss"] == pytest.approx(np.mean((r - target) ** 2), rel=1e-5)


def test_save_and_load_round_trip_a_graph(tmp_path):
    model, _ = _graph_model(dtype="float32", seed=3)
    x, y = _data(n=20)
    x = [a.astype(np.float32) for a in x]
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(0.1), metrics=[]).fit(
        x, y, epochs=2, batch_size=5, verbose=0)
    path = tmp_path / "graph.rpz"
    model.save(path)
    loaded = rp.load_model(path)
    assert isinstance(loaded, rp.Model) and not isinstance(loaded, rp.Sequential)
    assert loaded.input_names == ["a", "b"] and loaded.output_names == ["out"]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.summary(print_fn=None) == model.summary(print_fn=None)
    for w1, w2 in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    # and it trains on
    rp.Trainer(loaded, "categorical_crossentropy", rp.optim.SGD(0.1), metrics=[]).fit(
        x, y, epochs=1, batch_size=5, verbose=0)


def test_summary_shows_what_each_layer_is_connected_to():
    model, shared = _graph_model()
    text = model.summary(print_fn=None)
    assert "Connected to" in text
    assert "a (InputLayer)" in text and "b (InputLayer)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("concatenate"))
    assert line.rstrip().endswith("shared[0], shared[1]")
    line = next(ln for ln in text.splitlines() if ln.startswith("shared"))
    assert line.rstrip().endswith("a; b")
    assert f"Total params: {model.count_params():,}" in text


# ----------------------------------------------------------------------------- bad graphs

def test_an_input_that_leads_to_no_output_is_refused():
    a, b = rp.Input((3,), name="a"), rp.Input((2,), name="unused")
    out = L.Dense(2)(a)
    with pytest.raises(ValueError, match=r"input Input 'unused' \(N, 2\) does not lead to any "
                                         r"output"):
        rp.Model([a, b], out)


def test_an_output_not_computed_from_the_inputs_is_refused():
    a, b = rp.Input((3,), name="a"), rp.Input((3,), name="other")
    out = L.Dense(2, name="head")(b)
    with pytest.raises(ValueError, match=r"output head \(N, 2\) depends on Input 'other' "
                                         r"\(N, 3\), which is not one of the model's inputs"):
        rp.Model(a, out)


def test_add_of_mismatched_shapes_is_refused_where_it_is_written():
    a, b = rp.Input((3,), name="a"), rp.Input((4,), name="b")
    with pytest.raises(ValueError, match=r"Add 'add': inputs must have the same shape, got "
                                         r"\(N, 3\), \(N, 4\).*called on a \(N, 3\), b \(N, 4\)"):
        L.Add()([a, b])
    with pytest.raises(ValueError, match="same shape"):
        a + b


def test_concatenate_on_an_axis_where_shapes_differ_is_refused():
    a, b = rp.Input((2, 3), name="a"), rp.Input((2, 4), name="b")
    with pytest.raises(ValueError, match=r"Concatenate 'concatenate': inputs must agree on every "
                                         r"axis but the concatenation axis 1, got \(N, 2, 3\), "
                                         r"\(N, 2, 4\)"):
        L.Concatenate(axis=1)([a, b])
    assert L.Concatenate(axis=-1)([a, b]).shape == (2, 7)
    with pytest.raises(ValueError, match="batch axis 0 cannot be joined"):
        L.Concatenate(axis=0)([a, b])


def test_a_shared_layer_called_on_incompatible_shapes_is_refused():
    a, b = rp.Input((3,), name="a"), rp.Input((5,), name="b")
    dense = L.Dense(2, name="shared")
    dense(a)
    with pytest.raises(ValueError, match=r"Dense 'shared' is shared: it was first called on input "
                                         r"\(N, 3\) .* got b \(N, 5\)"):
        dense(b)
    built = rp.Sequential([L.Dense(2, name="built")], input_shape=(4,))
    with pytest.raises(ValueError, match=r"first called on input \(N, 4\)"):
        built.layers[0](a)


def test_a_dict_of_arrays_with_a_missing_or_unknown_name_is_refused():
    model, _ = _graph_model()
    x, y = _data()
    with pytest.raises(ValueError, match=r"no array for input 'b' \(N, 3\)"):
        model.predict({"a": x[0]})
    with pytest.raises(ValueError, match=r"unknown input name 'c'"):
        model.predict({"a": x[0], "b": x[1], "c": x[1]})
    trainer = rp.Trainer(model, "categorical_crossentropy", "sgd")
    with pytest.raises(ValueError, match=r"no array for input 'b'"):
        trainer.fit({"a": x[0]}, y, verbose=0)
    with pytest.raises(ValueError, match=r"input 'a' expects shape \(N, 3\), got \(6, 4\) "
                                         r"\(read by Dense 'shared'\)"):
        model.predict([np.zeros((6, 4)), x[1]])
    with pytest.raises(ValueError, match="has 2 inputs"):
        model.predict(x[0])


def test_other_bad_graphs():
    a = rp.Input((3,))
    with pytest.raises(TypeError, match="takes a list of input tensors"):
        L.Add()(a)
    with pytest.raises(ValueError, match="at least 2"):
        L.Add()([a])
    with pytest.raises(TypeError, match="takes one input tensor"):
        L.Dense(2)([a, a])
    with pytest.raises(ValueError, match="must be a tensor made by rp.Input"):
        rp.Model(L.Dense(2)(a), a)
    with pytest.raises(ValueError, match="two layers named 'x'"):
        rp.Model(a, L.Dense(2, name="x")(L.Dense(2, name="x")(a)))
    with pytest.raises(TypeError, match="cannot be part of a Sequential"):
        rp.Sequential([L.Add()])
    with pytest.raises(ValueError, match=r"Dense 'dense' expects input of shape \(N, features\)"):
        L.Dense(2)(rp.Input((3, 4)))
    with pytest.raises(TypeError, match="no truth value"):
        bool(a)


def test_grad_with_respect_to_weights_and_layers():
    x = rp.Input((3,))
    dense = L.Dense(2, use_bias=True)
    out = ops.sum(dense(x))
    model = rp.Model(x, out, dtype="float64", seed=0)
    xv = np.random.default_rng(0).standard_normal((4, 3))
    by_layer, dw = rp.grad(out, [dense, dense.params["W"]], xv)
    # out = sum_n sum_j (x W + b): dW[i, j] = sum_n x[n, i], db[j] = N
    np.testing.assert_allclose(dw, np.repeat(xv.sum(0)[:, None], 2, axis=1))
    np.testing.assert_allclose(by_layer["b"], [4.0, 4.0])
    assert model.predict(xv).shape == (4,)


def test_callbacks_accept_a_graph_model(tmp_path):
    model, shared = _graph_model(dtype="float32", seed=4)
    x, y = _data(n=40)
    x = [a.astype(np.float32) for a in x]
    monitor = rp.callbacks.GradientMonitor(x, y, bins=5)
    checkpoint = rp.callbacks.ModelCheckpoint(str(tmp_path / "g-{epoch}.rpz"))
    stop = rp.callbacks.EarlyStopping(monitor="loss", patience=1, restore_best_weights=True)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(0.05),
                         callbacks=[monitor, checkpoint, stop])
    trainer.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert [s["name"] for s in monitor.history[0]] == [layer.name for layer in model.layers]
    first = monitor.history[0][0]
    assert first["name"] == "shared" and first["grad_std"] > 0
    loaded = rp.load_model(checkpoint.saved[-1])
    assert loaded.input_names == ["a", "b"]
    assert loaded.predict(x).shape == (40, 3)
