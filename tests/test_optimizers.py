"""Adam, AdamW, RMSprop, Adagrad: kernels against the NumPy reference, formulas, learning."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import numpy_ref
from retroprop.layers import Dense

try:
    from retroprop.backend import cpu
except ImportError:   # the C extension is not built
    cpu = None

needs_c = pytest.mark.skipif(cpu is None, reason="C backend not built")
SIZES = [1, 17, 100003]
DTYPES = [np.float32, np.float64]


def arrays(n, dtype, count, seed=0):
    rng = np.random.default_rng(seed + n)
    return [rng.standard_normal(n).astype(dtype) for _ in range(count)]


def tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


def run_both(step, n, dtype, states, **kwargs):
    """Apply ``step`` three times through both backends; return their (param, states)."""
    param, *grads = arrays(n, dtype, 4)
    results = []
    for backend in (cpu, numpy_ref):
        p = param.copy()
        s = [None if x is None else x.copy() for x in states]
        for t, g in enumerate(grads, start=1):
            extra = {"step": t} if step == "adam_step" else {}
            getattr(backend, step)(p, g, *s, **kwargs, **extra)
        results.append((p, s))
    return results


@needs_c
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.1), (True, 0.1)])
def test_adam_kernel_matches_reference(n, dtype, decoupled, wd, simd):
    states = [np.zeros(n, dtype), np.zeros(n, dtype)]
    (pc, sc), (pn, sn) = run_both("adam_step", n, dtype, states, lr=0.01, beta_1=0.9,
                                  beta_2=0.999, epsilon=1e-7, weight_decay=wd,
                                  decoupled=decoupled)
    np.testing.assert_allclose(pc, pn, **tolerance(dtype))
    for a, b in zip(sc, sn):
        np.testing.assert_allclose(a, b, **tolerance(dtype))


@needs_c
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_kernel_matches_reference(n, dtype, momentum, simd):
    states = [np.zeros(n, dtype), np.zeros(n, dtype) if momentum else None]
    (pc, sc), (pn, sn) = run_both("rmsprop_step", n, dtype, states, lr=0.01, rho=0.9,
                                  momentum=momentum, epsilon=1e-7)
    np.testing.assert_allclose(pc, pn, **tolerance(dtype))
    np.testing.assert_allclose(sc[0], sn[0], **tolerance(dtype))


@needs_c
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adagrad_kernel_matches_reference(n, dtype, simd):
    states = [np.full(n, 0.1, dtype)]
    (pc, sc), (pn, sn) = run_both("adagrad_step", n, dtype, states, lr=0.01, epsilon=1e-7)
    np.testing.assert_allclose(pc, pn, **tolerance(dtype))
    np.testing.assert_allclose(sc[0], sn[0], **tolerance(dtype))


@needs_c
def test_kernel_argument_checks():
    p = np.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        cpu.adam_step(p, np.zeros(3), np.zeros(3), np.zeros(4), lr=0.1, beta_1=0.9,
                      beta_2=0.99, epsilon=1e-7, step=1)
    with pytest.raises(TypeError, match="dtype"):
        cpu.adagrad_step(p, np.zeros(3), np.zeros(3, np.float32), lr=0.1, epsilon=1e-7)
    with pytest.raises(ValueError, match="mom"):
        cpu.rmsprop_step(p, np.zeros(3), np.zeros(3), None, lr=0.1, rho=0.9, momentum=0.5,
                         epsilon=1e-7)
    with pytest.raises(ValueError, match="step"):
        cpu.adam_step(p, np.zeros(3), np.zeros(3), np.zeros(3), lr=0.1, beta_1=0.9,
                      beta_2=0.99, epsilon=1e-7, step=0)


# -- the optimizer classes against hand-written formulas (float64) ---------------------

def optimize(opt, grads, param):
    p = param.copy()
    for g in grads:
        opt.step([("w", p, g)])
    return p


def test_adam_formula():
    rng = np.random.default_rng(0)
    param = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(4)]
    p, m, v = param.copy(), np.zeros(5), np.zeros(5)
    for t, g in enumerate(grads, start=1):
        g = g + 0.01 * p
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.05 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-7)
    got = optimize(rp.optim.Adam(lr=0.05, weight_decay=0.01), grads, param)
    np.testing.assert_allclose(got, p, rtol=1e-12)


def test_first_adam_step_is_lr_times_sign():
    # With zero-initialised moments, bias correction makes step 1 equal lr * g / |g|.
    g = np.array([3.0, -0.2, 1e-3])
    got = optimize(rp.optim.Adam(lr=0.1, epsilon=1e-12), [g], np.zeros(3))
    np.testing.assert_allclose(got, -0.1 * np.sign(g), rtol=1e-6)


def test_adamw_decouples_the_decay():
    # With a zero gradient Adam's moments stay 0, so only the decay moves the weight.
    param = np.array([1.0, -2.0])
    got = optimize(rp.optim.AdamW(lr=0.1, weight_decay=0.5), [np.zeros(2)] * 3, param)
    np.testing.assert_allclose(got, param * (1 - 0.05) ** 3, rtol=1e-12)
    # Coupled L2 decay instead goes through the adaptive scaling (step ~ lr).
    coupled = optimize(rp.optim.Adam(lr=0.1, weight_decay=0.5), [np.zeros(2)], param)
    np.testing.assert_allclose(coupled, param - 0.1 * np.sign(param), rtol=1e-6)


def test_rmsprop_formula():
    rng = np.random.default_rng(1)
    param = rng.standard_normal(4)
    grads = [rng.standard_normal(4) for _ in range(3)]
    p, ms, mom = param.copy(), np.zeros(4), np.zeros(4)
    for g in grads:
        ms = 0.8 * ms + 0.2 * g * g
        mom = 0.5 * mom + 0.01 * g / (np.sqrt(ms) + 1e-7)
        p = p - mom
    got = optimize(rp.optim.RMSprop(lr=0.01, rho=0.8, momentum=0.5), grads, param)
    np.testing.assert_allclose(got, p, rtol=1e-12)


def test_adagrad_formula():
    rng = np.random.default_rng(2)
    param = rng.standard_normal(4)
    grads = [rng.standard_normal(4) for _ in range(3)]
    p, acc = param.copy(), np.full(4, 0.1)
    for g in grads:
        acc = acc + g * g
        p = p - 0.1 * g / (np.sqrt(acc) + 1e-7)
    got = optimize(rp.optim.Adagrad(lr=0.1), grads, param)
    np.testing.assert_allclose(got, p, rtol=1e-12)


# -- training ---------------------------------------------------------------------------

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
Y = np.array([0, 1, 1, 0])


@pytest.mark.parametrize("opt", [
    rp.optim.Adam(lr=0.05), rp.optim.AdamW(lr=0.05), rp.optim.RMSprop(lr=0.02),
    rp.optim.RMSprop(lr=0.01, momentum=0.9), rp.optim.Adagrad(lr=0.3),
    rp.optim.SGD(lr=0.5), rp.optim.SGD(lr=0.1, momentum=0.9),
    rp.optim.SGD(lr=0.1, momentum=0.9, nesterov=True)], ids=repr)
def test_every_optimizer_learns_xor(opt):
    model = rp.Sequential([Dense(8, activation="tanh"), Dense(2, activation="softmax")],
                          input_shape=(2,), seed=0)
    trainer = rp.Trainer(model, "categorical_crossentropy", opt, metrics=["accuracy"])
    trainer.fit(X, Y, epochs=300, batch_size=4, verbose=0, seed=0)
    result = trainer.evaluate(X, Y)
    assert result["accuracy"] == 1.0 and result["loss"] < 0.1


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "adagrad"])
def test_names_serialisation_and_state_dict(name):
    opt = rp.optim.get(name)
    clone = rp.optim.deserialize(opt.serialize())
    assert type(clone) is type(opt) and clone.get_config() == opt.get_config()
    rng = np.random.default_rng(0)
    param = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(4)]
    a = param.copy()
    for g in grads[:2]:
        opt.step([("w", a, g)])
    # Continue from a saved state in a fresh optimizer: same result as not stopping.
    fresh = rp.optim.get(name)
    fresh.load_state_dict(opt.state_dict())
    b = a.copy()
    for g in grads[2:]:
        opt.step([("w", a, g)])
        fresh.step([("w", b, g)])
    np.testing.assert_array_equal(a, b)
    assert fresh.iterations == 4


def test_schedule_lr_is_accepted():
    opt = rp.optim.Adam(lr=lambda t: 0.1 / (1 + t))
    assert opt.current_lr() == 0.1
    opt.step([("w", np.zeros(2), np.ones(2))])
    assert opt.current_lr() == 0.05


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="beta_1"):
        rp.optim.Adam(beta_1=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        rp.optim.RMSprop(epsilon=0)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        rp.optim.Adagrad(initial_accumulator_value=-1)


def test_rolled_back_step_restores_adagrad_initial_state():
    opt = rp.optim.Adagrad(lr=0.1, initial_accumulator_value=0.25)
    assert opt.initial_state_value("acc:w") == 0.25


@pytest.mark.parametrize("make", [
    lambda: rp.optim.Adam(lr=rp.schedules.CosineDecay(0.1, 100)),
    lambda: rp.optim.RMSprop(momentum=0.5), lambda: rp.optim.Adagrad()],
    ids=["adam_cosine", "rmsprop", "adagrad"])
def test_saved_with_the_model(make, tmp_path):
    model = rp.Sequential([Dense(3, activation="softmax")], input_shape=(2,), seed=0)
    x = np.random.default_rng(0).standard_normal((8, 2))
    opt = make()
    rp.Trainer(model, "categorical_crossentropy", opt).fit(x, np.arange(8) % 3, epochs=2,
                                                           batch_size=4, verbose=0)
    path = str(tmp_path / "m.rpz")
    model.save(path, optimizer=opt)
    _, restored, _ = rp.load_model(path, return_optimizer=True)
    assert type(restored) is type(opt) and restored.get_config() == opt.get_config()
    a, b = opt.state_dict(), restored.state_dict()
    assert a["iterations"] == b["iterations"] == 4
    for slot in opt.slots:
        for key in a[slot]:
            np.testing.assert_array_equal(a[slot][key], b[slot][key])


# -- check_only: the trainer's all-or-nothing step ------------------------------------

CHECK_CASES = [
    ("sgd_step", lambda n, d: [None], dict(lr=0.1)),
    ("sgd_step", lambda n, d: [np.zeros(n, d)], dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("sgd_step", lambda n, d: [np.zeros(n, d)], dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("adam_step", lambda n, d: [np.zeros(n, d), np.zeros(n, d)],
     dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)),
    ("adam_step", lambda n, d: [np.zeros(n, d), np.zeros(n, d)],
     dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3, weight_decay=0.1,
          decoupled=True)),
    ("rmsprop_step", lambda n, d: [np.zeros(n, d), None], dict(lr=0.01, rho=0.9, epsilon=1e-7)),
    ("rmsprop_step", lambda n, d: [np.zeros(n, d), np.zeros(n, d)],
     dict(lr=0.01, rho=0.9, momentum=0.5, epsilon=1e-7)),
    ("adagrad_step", lambda n, d: [np.full(n, 0.1, d)], dict(lr=0.01, epsilon=1e-7)),
]


@pytest.mark.parametrize("backend", [pytest.param(cpu, id="cpu", marks=needs_c),
                                     pytest.param(numpy_ref, id="numpy")])
@pytest.mark.parametrize("step,make_states,kwargs", CHECK_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 13, 70001])
def test_check_only_counts_nonfinite_and_writes_nothing(backend, step, make_states, kwargs,
                                                        dtype, n):
    rng = np.random.default_rng(n)
    param = rng.standard_normal(n).astype(dtype)
    grad = rng.standard_normal(n).astype(dtype)
    states = make_states(n, dtype)
    fn = getattr(backend, step)

    def unchanged(p, s):
        np.testing.assert_array_equal(p, param)
        for a, b in zip(s, states):
            if a is not None:
                np.testing.assert_array_equal(a, b)

    # A finite step: count 0, nothing written.
    p, s = param.copy(), [None if a is None else a.copy() for a in states]
    assert fn(p, grad, *s, **kwargs, check_only=True) == 0
    unchanged(p, s)
    # NaN and Inf gradients: counted (one per bad element), nothing written.
    bad = grad.copy()
    bad[0] = np.nan
    bad[n // 2] = np.inf
    expected = 1 if n == 1 else 2
    assert fn(p, bad, *s, **kwargs, check_only=True) >= expected
    unchanged(p, s)
    # The real step on the finite gradient changes the parameter and returns 0.
    assert fn(p, grad, *s, **kwargs) == 0
    assert not np.array_equal(p, param)


@needs_c
@pytest.mark.parametrize("dtype", DTYPES)
def test_check_only_sees_an_overflowing_update(dtype):
    big = np.finfo(dtype).max
    param = np.array([1.0, -1.0, 0.5], dtype)
    grad = np.array([2.0, 1e-3, -2.0], dtype)
    for backend in (cpu, numpy_ref):
        p, v = param.copy(), np.zeros(3, dtype)
        # lr * grad overflows for the first and third element only.
        count = backend.sgd_step(p, grad, v, lr=big, momentum=0.5, check_only=True)
        assert count == 2
        np.testing.assert_array_equal(p, param)


def test_trainer_refuses_a_step_with_a_nan_gradient_without_touching_state():
    x = np.ones((4, 3))
    model = rp.Sequential([Dense(2)], input_shape=(3,), dtype="float64", seed=0)
    optimizer = rp.optim.Adam(lr=0.1)
    trainer = rp.Trainer(model, "mse", optimizer, metrics=[])
    trainer.fit(x, np.zeros((4, 2)), epochs=1, batch_size=4, verbose=0)
    before = model.get_weights()
    state = {k: a.copy() for k, a in optimizer.state_arrays().items()}
    # A regularizer whose gradient is NaN makes the next gradient NaN with a finite loss.
    layer = model.layers[0]

    class NanGradient(rp.regularizers.L2):
        def gradient(self, w):
            return np.full_like(w, np.nan)

    layer.kernel_regularizer = NanGradient(0.0)
    with pytest.raises(rp.NonFiniteError, match=r"gradient of dense/W contains NaN or Inf "
                                                r"at epoch 1/1, batch 1/1"):
        trainer.fit(x, np.zeros((4, 2)), epochs=1, batch_size=4, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    for k, a in optimizer.state_arrays().items():
        np.testing.assert_array_equal(a, state[k])
    assert optimizer.iterations == 1


# -- optimizer_step: every parameter in one call ------------------------------------------

# (rule, single-tensor step, states per tensor, hyper-parameters of both APIs)
MULTI_CASES = [
    ("sgd", "sgd_step", lambda n, d: [np.zeros(n, d), None],
     dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("sgd", "sgd_step", lambda n, d: [np.zeros(n, d), None],
     dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd", "sgd_step", lambda n, d: [None, None], dict(lr=0.05)),
    ("adam", "adam_step", lambda n, d: [np.zeros(n, d), np.zeros(n, d)],
     dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=2, weight_decay=0.1,
          decoupled=True)),
    ("rmsprop", "rmsprop_step", lambda n, d: [np.zeros(n, d), np.zeros(n, d)],
     dict(lr=0.01, rho=0.9, momentum=0.5, epsilon=1e-7)),
    ("adagrad", "adagrad_step", lambda n, d: [np.full(n, 0.1, d), None],
     dict(lr=0.01, epsilon=1e-7)),
]
# A model's worth of awkward sizes: 1, primes, one large enough to be split over threads.
MULTI_SIZES = [1, 7, 100003, 13, 40961]


def multi_arrays(dtype, make_states, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in MULTI_SIZES]
    grads = [rng.standard_normal(n).astype(dtype) for n in MULTI_SIZES]
    states = [make_states(n, dtype) for n in MULTI_SIZES]
    return params, grads, states


def assert_same_arrays(params, states, want_params, want_states):
    for a, b in zip(params, want_params):
        np.testing.assert_array_equal(a, b)
    for sa, sb in zip(states, want_states):
        for a, b in zip(sa, sb):
            if a is not None:
                np.testing.assert_array_equal(a, b)


def single_call(single, p, g, s, kwargs):
    states = s[:1] if single in ("sgd_step", "adagrad_step") else s
    return getattr(cpu, single)(p, g, *states, **kwargs)


@needs_c
@pytest.mark.parametrize("rule,single,make_states,kwargs", MULTI_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
# 3 and 5 threads on a 2-core machine: threads descheduled mid-step, so the
# others run their chunks (checked and written by different threads).
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_optimizer_step_equals_one_call_per_parameter(rule, single, make_states, kwargs, dtype,
                                                      threads, simd):
    params, grads, states = multi_arrays(dtype, make_states)
    ref_params = [p.copy() for p in params]
    ref_states = [[None if a is None else a.copy() for a in s] for s in states]
    old = rp.get_num_threads()
    rp.set_num_threads(threads)
    try:
        for _ in range(2):
            bad = cpu.optimizer_step(rule, params, grads, [s[0] for s in states],
                                     [s[1] for s in states], mode="check_apply", **kwargs)
            assert bad == -1
            for p, g, s in zip(ref_params, grads, ref_states):
                single_call(single, p, g, s, kwargs)
    finally:
        rp.set_num_threads(old)
    assert_same_arrays(params, states, ref_params, ref_states)


@pytest.mark.parametrize("backend", [pytest.param(cpu, id="cpu", marks=needs_c),
                                     pytest.param(numpy_ref, id="numpy")])
@pytest.mark.parametrize("rule,single,make_states,kwargs", MULTI_CASES)
@pytest.mark.parametrize("bad_index", [0, 2, 4])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_optimizer_step_refuses_the_whole_step_when_one_update_is_not_finite(
        backend, rule, single, make_states, kwargs, bad_index, threads):
    params, grads, states = multi_arrays(np.float32, make_states, seed=1)
    grads[bad_index][-1] = np.nan
    if bad_index == 4:
        grads[2][5] = np.inf      # two bad parameters: the first one is reported
    before = [p.copy() for p in params]
    states_before = [[None if a is None else a.copy() for a in s] for s in states]
    old = rp.get_num_threads()
    rp.set_num_threads(threads)
    try:
        for mode in ("check", "check_apply"):
            bad = backend.optimizer_step(rule, params, grads, [s[0] for s in states],
                                         [s[1] for s in states], mode=mode, **kwargs)
            assert bad == (2 if bad_index == 4 else bad_index)
    finally:
        rp.set_num_threads(old)
    assert_same_arrays(params, states, before, states_before)
    # "apply" does not check: it writes (NaN included) and reports nothing.
    with np.errstate(invalid="ignore", over="ignore"):
        bad = backend.optimizer_step(rule, params, grads, [s[0] for s in states],
                                     [s[1] for s in states], mode="apply", **kwargs)
    assert bad == -1
    assert np.isnan(params[bad_index][-1])
    assert not np.array_equal(params[1], before[1])


@needs_c
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_step_refuses_an_overflow_in_any_parameter(dtype):
    big = np.finfo(dtype).max
    params = [np.ones(50000, dtype), np.array([1.0, 3.0], dtype)]
    grads = [np.full(50000, 1e-30, dtype), np.array([0.0, 2.0], dtype)]
    velocity = [np.zeros(50000, dtype), np.zeros(2, dtype)]
    for backend in (cpu, numpy_ref):
        p = [a.copy() for a in params]
        v = [a.copy() for a in velocity]
        bad = backend.optimizer_step("sgd", p, grads, v, [None, None], lr=big, momentum=0.5)
        assert bad == 1
        for a, b in zip(p + v, params + velocity):
            np.testing.assert_array_equal(a, b)


@needs_c
def test_optimizer_step_bad_input_names_the_parameter():
    p = [np.zeros(3, np.float32), np.zeros(4, np.float32)]
    g = [np.zeros(3, np.float32), np.zeros(5, np.float32)]
    with pytest.raises(ValueError, match=r"grad \(parameter 1\): expected shape \(4,\)"):
        cpu.optimizer_step("sgd", p, g, [None, None], [None, None], lr=0.1)
    with pytest.raises(ValueError, match=r"velocity \(parameter 0\): required by sgd"):
        cpu.optimizer_step("sgd", p, [np.zeros(3, np.float32), np.zeros(4, np.float32)],
                           [None, None], [None, None], lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"param \(parameter 1\): every parameter must have "
                                        r"the same dtype"):
        cpu.optimizer_step("adagrad", [np.zeros(3, np.float32), np.zeros(4)],
                           [np.zeros(3, np.float32), np.zeros(4)],
                           [np.zeros(3, np.float32), np.zeros(4)], [None, None], lr=0.1)
    with pytest.raises(ValueError, match="same length"):
        cpu.optimizer_step("sgd", p, g[:1], [None, None], [None, None], lr=0.1)
    with pytest.raises(ValueError, match="rule"):
        cpu.optimizer_step("lion", p, g, [None, None], [None, None], lr=0.1)
    with pytest.raises(ValueError, match="mode"):
        cpu.optimizer_step("sgd", p, g, [None, None], [None, None], lr=0.1, mode="maybe")
    read_only = np.zeros(3, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"param \(parameter 0\): array is read-only"):
        cpu.optimizer_step("sgd", [read_only], [np.zeros(3, np.float32)], [None], [None], lr=0.1)


def test_apply_step_counts_only_applied_steps():
    opt = rp.optim.Adam(lr=0.1)
    w = np.ones(3)
    assert opt.apply_step([("w", w, np.array([np.nan, 1.0, 1.0]))]) == "w"
    assert opt.iterations == 0
    np.testing.assert_array_equal(w, 1.0)
    assert opt.apply_step([("w", w, np.ones(3))]) is None
    assert opt.iterations == 1
    # The first Adam step moves every weight by lr against the gradient's sign.
    np.testing.assert_allclose(w, 0.9)


def _sgd_by_hand(w, v, g, lr, momentum):
    v[...] = momentum * v + g
    w -= lr * v


def test_repeated_steps_reuse_lists_but_follow_new_arrays_and_state():
    """Steps reuse the backend's argument lists of the previous step; every
    change that matters must still be seen: a new parameter list, a new
    gradient array, momentum switched on, and state replaced by load_state_dict."""
    w1, w2 = np.ones(4), np.full(3, 2.0)
    g1, g2 = np.full(4, 0.5), np.full(3, -1.0)
    opt = rp.optim.SGD(lr=0.1)
    items = [("a", w1, g1), ("b", w2, g2)]
    opt.apply_step(items)
    opt.apply_step(list(items))                  # same arrays: the lists are reused
    np.testing.assert_allclose(w1, 1.0 - 2 * 0.05)
    np.testing.assert_allclose(w2, 2.0 + 2 * 0.1)

    opt.apply_step([("a", w1, g1)])              # a shorter list: "b" untouched
    np.testing.assert_allclose(w1, 1.0 - 3 * 0.05)
    np.testing.assert_allclose(w2, 2.0 + 2 * 0.1)

    g1_new = np.full(4, 2.0)                     # a new gradient array under the same key
    opt.apply_step([("a", w1, g1_new)])
    np.testing.assert_allclose(w1, 1.0 - 3 * 0.05 - 0.2)

    opt.momentum = 0.5                           # momentum on: velocity must appear
    expected, v = w1.copy(), np.zeros(4)
    for _ in range(2):
        opt.apply_step([("a", w1, g1_new)])
        _sgd_by_hand(expected, v, g1_new, 0.1, 0.5)
    np.testing.assert_allclose(w1, expected)
    np.testing.assert_allclose(opt.velocity["a"], v)

    state = opt.state_dict()                     # replace the state: the new arrays are used
    state["velocity"]["a"] = np.full(4, 10.0)
    opt.load_state_dict(state)
    v = np.full(4, 10.0)
    opt.apply_step([("a", w1, g1_new)])
    _sgd_by_hand(expected, v, g1_new, 0.1, 0.5)
    np.testing.assert_allclose(w1, expected)
    np.testing.assert_allclose(opt.velocity["a"], v)


@pytest.mark.parametrize("make", [lambda: rp.optim.Adam(lr=0.1), lambda: rp.optim.RMSprop(momentum=0.5),
                                  lambda: rp.optim.Adagrad(lr=0.1)])
def test_stateful_optimizer_steps_follow_load_state_dict(make):
    """After load_state_dict, the next step reads the loaded state, not the
    arrays the previous steps used."""
    w, g = np.ones(5), np.linspace(-1, 1, 5)
    reference, opt = make(), make()
    opt.apply_step([("w", w, g)])
    saved = opt.state_dict()
    opt.apply_step([("w", w, g)])                # changes the state arrays in place
    w_ref = w.copy()
    opt.load_state_dict(saved)                   # back to the state after one step
    reference.load_state_dict(saved)
    opt.apply_step([("w", w, g)])
    reference.apply_step([("w", w_ref, g)])
    np.testing.assert_array_equal(w, w_ref)
    for key, arr in reference.state_arrays().items():
        np.testing.assert_array_equal(opt.state_arrays()[key], arr)
