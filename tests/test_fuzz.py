"""Random calls of every public backend function, layer, loss and optimizer
(issue 23: "no crash from any input, no silent wrong answer").

Each case draws shapes (0, 1, primes, powers of two, a few large), dtypes
(float32/float64, and integers, float16 or complex that must be refused),
memory layouts (C order, Fortran order, strided views), values (normal at
several scales, and NaN/Inf/huge/tiny/-0.0 sprinkled in) and arguments
(activation parameters, geometry, hyper-parameters, some invalid), then runs
the C backend (``retroprop.backend.cpu``) and the NumPy reference
(``retroprop.backend.numpy_ref``) on copies of the same arrays:

* both succeed: the results must agree (a tolerance scaled by the size of
  the terms summed; the same NaN/Inf positions);
* the C backend refuses: with ValueError or TypeError only (IndexError for a
  gather out of range, as documented), never anything else or a crash;
* the reference refuses and the C backend does not: a failure (the C
  backend silently accepted something without a defined answer).

CI runs a fixed, derandomized set of examples (RETROPROP_FUZZ_EXAMPLES per
target, default 60). ``RETROPROP_FUZZ_SECONDS=600 pytest tests/test_fuzz.py``
runs random seeds instead, each target for its share of that many seconds.
The number of calls made is printed at the end (``-s``, or the last test's
output) and checked to be substantial.
"""
import collections
import itertools
import math
import os
import time

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import retroprop as rp  # noqa: E402
from retroprop import losses, optim  # noqa: E402
from retroprop.backend import cpu  # noqa: E402
from retroprop.backend import numpy_ref as ref  # noqa: E402

FUZZ_SECONDS = float(os.environ.get("RETROPROP_FUZZ_SECONDS", "0") or 0)
EXAMPLES = int(os.environ.get("RETROPROP_FUZZ_EXAMPLES", "60"))
CALLS = collections.Counter()        # backend/layer/loss/optimizer calls made, by target

FLOATS = (np.float32, np.float64)
BAD_DTYPES = (np.int32, np.float16, np.complex64, np.int64, np.bool_)
DIMS = (0, 1, 1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 64)
SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, 1e30)


# ---------------------------------------------------------------- running the targets

def run(target_name, body):
    """The test body for one target: a fixed derandomized set of examples in
    CI, or with RETROPROP_FUZZ_SECONDS fresh random ones until its time is up."""
    strategy = st.data()
    common = dict(deadline=None, database=None, print_blob=True,
                  suppress_health_check=list(HealthCheck))

    def one(data):
        CALLS[target_name] += 0     # the target appears in the report even if all refused
        body(data)

    if FUZZ_SECONDS <= 0:
        settings(max_examples=EXAMPLES, derandomize=True, **common)(given(strategy)(one))()
        return
    end = time.monotonic() + FUZZ_SECONDS / len(TARGETS)
    while time.monotonic() < end:
        settings(max_examples=50, derandomize=False, **common)(given(strategy)(one))()


def call(target, fn, *args, **kwargs):
    CALLS[target] += 1
    return fn(*args, **kwargs)


# What the reference may raise to give up (see outcome).
REFERENCE_REFUSALS = (ValueError, TypeError, IndexError, OverflowError, MemoryError)


class Refused:
    def __init__(self, error):
        self.error = error


def outcome(target, fn, *args, reference=False, **kwargs):
    """fn's result, or Refused(error) for a ValueError/TypeError/IndexError;
    anything else propagates (a failure). The reference (plain NumPy, not
    held to this contract) may also give up with OverflowError or
    MemoryError on hostile geometry."""
    refusals = REFERENCE_REFUSALS if reference else (ValueError, TypeError, IndexError)
    try:
        with np.errstate(all="ignore"):
            return call(target, fn, *args, **kwargs)
    except refusals as e:
        return Refused(e)


def both(target, ref_fn, cpu_fn, compare, allow_index_error=False):
    """Run the reference and the C backend (each a thunk) and compare."""
    want = outcome(target, ref_fn, reference=True)
    got = outcome(target, cpu_fn)
    if isinstance(got, Refused):
        allowed = (ValueError, TypeError, IndexError) if allow_index_error else (ValueError,
                                                                                  TypeError)
        assert isinstance(got.error, allowed), f"{target}: refused with {got.error!r}"
        return
    if isinstance(want, Refused):
        pytest.fail(f"{target}: the reference refused ({want.error!r}) but the C backend "
                    f"accepted")
    compare(want, got)


def assert_close(want, got, scale, dtype, what, slack=64.0):
    """|got - want| <= slack * eps * scale elementwise (scale: the size of the
    terms that were summed); NaN and Inf exactly where the reference has them."""
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert want.shape == got.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    inf = np.isinf(want)
    np.testing.assert_array_equal(np.isinf(got), inf, err_msg=f"{what}: Inf positions")
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: Inf signs")
    finite = np.isfinite(want)
    eps = np.finfo(dtype).eps
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), want.shape)
    tol = slack * eps * (scale[finite] + 1e-30) + np.finfo(dtype).tiny * 16
    err = np.abs(got[finite] - want[finite])
    if err.size and not (err <= tol).all():
        worst = np.argmax(err - tol)
        pytest.fail(f"{what}: |got - want| = {err[worst]:.3g} > {tol[worst]:.3g} "
                    f"(want {want[finite][worst]:.6g}, got {got[finite][worst]:.6g})")


# ---------------------------------------------------------------- drawing arguments

def draw_dim(data, large=False):
    choices = DIMS + ((257, 1031) if large else ())
    return data.draw(st.sampled_from(choices))


def draw_dtype(data, allow_bad=True):
    if allow_bad and data.draw(st.integers(0, 19)) == 0:
        return data.draw(st.sampled_from(BAD_DTYPES))
    return data.draw(st.sampled_from(FLOATS))


def draw_array(data, shape, dtype, specials=True, scale=None, positive=False):
    """An array of ``shape`` and ``dtype`` in a random layout (C order,
    Fortran order or a strided view), with special values sometimes."""
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if scale is None:
        scale = data.draw(st.sampled_from((1.0, 1.0, 1e-3, 1e3)))
    values = rng.standard_normal(shape) * scale
    if positive:
        values = np.abs(values)
    if specials and values.size and data.draw(st.integers(0, 4)) == 0:
        flat = values.reshape(-1)
        for _ in range(data.draw(st.integers(1, 3))):
            flat[rng.integers(flat.size)] = data.draw(st.sampled_from(SPECIALS))
    layout = data.draw(st.sampled_from(("C", "C", "F", "strided")))
    kind = np.dtype(dtype).kind
    if kind in "iub":
        values = np.nan_to_num(values, nan=0, posinf=0, neginf=0).clip(-100, 100)
    arr = np.asarray(values).astype(dtype)
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        bigger = np.zeros(arr.shape[:-1] + (arr.shape[-1] * 2,), dtype)
        bigger[..., ::2] = arr
        arr = bigger[..., ::2]
    return arr


def finite_scale(*arrays):
    """A magnitude for tolerances: the largest finite |value| of the arrays (>= 1e-30)."""
    m = 1e-30
    for a in arrays:
        if a is not None and np.asarray(a).size:
            f = np.abs(np.asarray(a, dtype=np.float64))
            f = f[np.isfinite(f)]
            if f.size:
                m = max(m, float(f.max()))
    return m


def copies(*arrays):
    return [None if a is None else np.array(a, copy=True, order="K") for a in arrays]


# ---------------------------------------------------------------- backend targets

def fuzz_gemm(data):
    dtype = draw_dtype(data)
    m, n, k = draw_dim(data, large=True), draw_dim(data), draw_dim(data, large=True)
    ta, tb = data.draw(st.booleans()), data.draw(st.booleans())
    alpha = data.draw(st.sampled_from((1.0, 0.5, -2.0, 0.0)))
    beta = data.draw(st.sampled_from((0.0, 0.0, 1.0, -0.5)))
    specials = alpha != 0.0      # BLAS: with alpha == 0, A and B are not read
    a = draw_array(data, (k, m) if ta else (m, k), dtype, specials)
    b = draw_array(data, (n, k) if tb else (k, n), dtype, specials)
    c = draw_array(data, (m, n), dtype) if beta != 0.0 else None
    if c is not None and data.draw(st.booleans()):
        c = np.ascontiguousarray(c)
    kw = dict(trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)

    def compare(want, got):
        aa, bb = np.abs(a.T if ta else a).astype(np.float64), np.abs(b.T if tb else b)
        with np.errstate(all="ignore"):
            scale = abs(alpha) * np.nan_to_num(aa, posinf=0) @ np.nan_to_num(bb, posinf=0)
            if c is not None:
                scale = scale + abs(beta) * np.nan_to_num(np.abs(c), posinf=0)
        assert_close(want, got, scale * (k + 2), dtype, "gemm")

    both("gemm", lambda: ref.gemm(*copies(a, b, c), **kw),
         lambda: cpu.gemm(*copies(a, b, c), **kw), compare)


ACT_PARAMS = {"sigmoid": (None, 1.0, 2.5, 0.1, 1e-300, 1e300, -1.0, 0.0),
              "leaky_relu": (None, 0.0, 0.2, 3.0, 1e300, -0.5, np.nan),
              "elu": (None, 0.0, 0.7, 2.0, 1e300, -1.0, np.inf)}


def draw_activation(data, names):
    name = data.draw(st.sampled_from(names))
    param = data.draw(st.sampled_from(ACT_PARAMS.get(name, (None,))))
    return name, param


def activation_scale(x):
    """Tolerance scale for an elementwise activation of x: its magnitude, at least 1."""
    with np.errstate(all="ignore"):
        return np.maximum(np.nan_to_num(np.abs(np.asarray(x, np.float64)), posinf=0), 1.0)


def fuzz_activation(data):
    dtype = draw_dtype(data)
    shape = tuple(draw_dim(data) for _ in range(data.draw(st.integers(0, 3))))
    name, param = draw_activation(data, cpu.ELEMENTWISE_ACTIVATIONS + ("nonsense",))
    x = draw_array(data, shape, dtype, scale=data.draw(st.sampled_from((1.0, 5.0, 30.0))))

    def compare_forward(want, got):
        # At x = +-Inf the reference's textbook formulas may give NaN (gelu,
        # swish: Inf * 0) where the C kernels return the limit: not compared.
        if np.dtype(dtype).kind == "f" and np.isinf(x).any():
            keep = ~np.isinf(x)
            want, got = np.asarray(want)[keep], np.asarray(got)[keep]
            assert_close(want, got, activation_scale(x[keep]), dtype, f"{name} forward", 256)
            return
        assert_close(want, got, activation_scale(x), dtype, f"{name} forward", 256)

    both("activation_forward", lambda: ref.activation_forward(name, *copies(x), param=param),
         lambda: cpu.activation_forward(name, *copies(x), param=param), compare_forward)
    try:
        y = ref.activation_forward(name, x.copy(), param=param)
    except REFERENCE_REFUSALS:
        return
    dy = draw_array(data, shape, dtype, specials=False)
    keep = ~np.isinf(x) if np.dtype(dtype).kind == "f" else np.ones(x.shape, bool)
    both("activation_backward",
         lambda: ref.activation_backward(name, *copies(y, dy), x=x.copy(), param=param),
         lambda: cpu.activation_backward(name, *copies(y, dy), x=x.copy(), param=param),
         lambda w, g: assert_close(np.asarray(w)[keep], np.asarray(g)[keep],
                                   activation_scale(dy[keep]) * (1 + np.abs(param or 1.0)),
                                   dtype, f"{name} backward", 256))


def fuzz_dense(data):
    dtype = draw_dtype(data)
    nb, n_in, n_out = draw_dim(data, large=True), draw_dim(data), draw_dim(data)
    name, param = draw_activation(data, cpu.FUSED_ACTIVATIONS + ("softmax",))
    x = draw_array(data, (nb, n_in), dtype, specials=False)
    w = draw_array(data, (n_in, n_out), dtype, specials=False, scale=0.3)
    b = draw_array(data, (n_out,), dtype, specials=False) if data.draw(st.booleans()) else None
    if np.dtype(dtype).kind == "f":
        scale = (np.abs(x.astype(np.float64)) @ np.abs(w) + (0 if b is None else np.abs(b))) \
            * (n_in + 2) * (1 + abs(np.nan_to_num(param or 1.0)))
    else:
        scale = 1.0     # refused anyway
    both("dense_forward", lambda: ref.dense_forward(*copies(x, w, b), name, param=param),
         lambda: cpu.dense_forward(*copies(x, w, b), name, param=param),
         lambda want, got: assert_close(want, got, np.maximum(scale, 1.0), dtype,
                                        f"dense {name}", 256))
    if name == "softmax":
        return
    try:
        y = ref.dense_forward(x, w, b, name, param=param)
    except REFERENCE_REFUSALS:
        return
    dy = draw_array(data, (nb, n_out), dtype, specials=False)

    def backward(module):
        dw = np.empty((n_in, n_out), dtype)
        db = None if b is None else np.empty(n_out, dtype)
        dx = np.empty((nb, n_in), dtype)
        module.dense_backward(*copies(x, w, y, dy), name, dw, db, dx, param=param)
        return dw, db, dx

    def compare(want, got):
        g = np.abs(dy.astype(np.float64)) * (1 + abs(param or 1.0))
        scales = (np.abs(x.T.astype(np.float64)) @ g * (nb + 2), g.sum(0) * (nb + 2) + 1,
                  g @ np.abs(w.T) * (n_out + 2))
        for wa, ga, s, what in zip(want, got, scales, ("dw", "db", "dx")):
            if wa is not None:
                assert_close(wa, ga, np.maximum(s, 1.0), dtype, f"dense {name} {what}", 256)

    both("dense_backward", lambda: backward(ref), lambda: backward(cpu), compare)


def fuzz_softmax(data):
    dtype = draw_dtype(data)
    n, c = draw_dim(data, large=True), draw_dim(data)
    z = draw_array(data, (n, c), dtype, scale=data.draw(st.sampled_from((1.0, 30.0, 1e4))))
    both("softmax", lambda: ref.softmax(*copies(z)), lambda: cpu.softmax(*copies(z)),
         lambda w, g: assert_close(w, g, 1.0, dtype, "softmax", 256))
    kind = data.draw(st.sampled_from(("labels", "onehot", "bad_labels", "float_labels")))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    if kind == "labels":
        t = rng.integers(0, max(c, 1), n)
    elif kind == "onehot":
        t = np.eye(max(c, 1), dtype=dtype)[rng.integers(0, max(c, 1), n)][:, :c]
    elif kind == "bad_labels":
        t = rng.integers(-2, c + 3, n)
    else:
        t = rng.random(n)
    z = np.nan_to_num(z, nan=0.0, posinf=1e3, neginf=-1e3)

    def compare(want, got):
        assert_close(want[0], got[0], max(finite_scale(z), 1.0) * 4, np.float32, "xent loss", 256)
        assert_close(want[1], got[1], 1.0 / max(n, 1), dtype, "xent grad", 256)

    both("softmax_cross_entropy", lambda: ref.softmax_cross_entropy(*copies(z, t)),
         lambda: cpu.softmax_cross_entropy(*copies(z, t)), compare)


def draw_geometry(data, pool=False):
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    dilation = (1, 1) if pool else (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    limit = (kh - 1, kh - 1, kw - 1, kw - 1) if pool else (2, 2, 2, 2)
    padding = tuple(data.draw(st.integers(0, max(0, lim))) for lim in limit)
    if data.draw(st.integers(0, 15)) == 0:       # hostile geometry
        which = data.draw(st.integers(0, 2))
        huge = data.draw(st.sampled_from((2**31 - 1, 2**31, 2**40, 2**64, -1)))
        if which == 0:
            stride = (1, huge)
        elif which == 1:
            padding = (0, 0, huge, 0)
        else:
            dilation = (huge, 1)
    return (kh, kw), stride, dilation, padding


def fuzz_conv2d(data):
    dtype = draw_dtype(data)
    n = data.draw(st.sampled_from((1, 2, 3, 0)))
    h, w = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    c = data.draw(st.sampled_from((1, 2, 3, 5, 8, 16)))
    f = data.draw(st.sampled_from((1, 2, 3, 6, 8, 16, 17)))
    kernel, stride, dilation, padding = draw_geometry(data)
    name, _ = draw_activation(data, cpu.FUSED_ACTIVATIONS)
    x = draw_array(data, (n, h, w, c), dtype, specials=False)
    wt = draw_array(data, kernel + (c, f), dtype, specials=False, scale=0.3)
    b = draw_array(data, (f,), dtype, specials=False) if data.draw(st.booleans()) else None
    kw = dict(stride=stride, dilation=dilation, padding=padding)
    patch = kernel[0] * kernel[1] * c
    try:
        with np.errstate(all="ignore"):
            bound = ref.conv2d_forward(np.abs(x).astype(np.float64), np.abs(wt).astype(np.float64),
                                       None, "linear", **kw)
        bound = (bound + (0 if b is None else np.abs(b))) * (patch + 2)
    except REFERENCE_REFUSALS:
        bound = None
    both("conv2d_forward", lambda: ref.conv2d_forward(*copies(x, wt, b), name, **kw),
         lambda: cpu.conv2d_forward(*copies(x, wt, b), name, **kw),
         lambda want, got: assert_close(want, got, np.maximum(bound, 1.0), dtype,
                                        f"conv2d {name}", 256))
    if bound is None:
        return
    try:
        y = ref.conv2d_forward(x, wt, b, name, **kw)
    except REFERENCE_REFUSALS:
        return
    dy = draw_array(data, y.shape, dtype, specials=False)

    def backward(module):
        dw, db = np.empty(wt.shape, dtype), None if b is None else np.empty(f, dtype)
        dx = np.empty(x.shape, dtype)
        module.conv2d_backward(*copies(x, wt, y, dy), name, dw, db, dx, **kw)
        return dw, db, dx

    def compare(want, got):
        g = finite_scale(dy) * (1 + finite_scale(x)) * (1 + finite_scale(wt)) * \
            (y.size + patch * f + 2)
        for wa, ga, what in zip(want, got, ("dw", "db", "dx")):
            if wa is not None:
                assert_close(wa, ga, g, dtype, f"conv2d {name} {what}", 64)

    both("conv2d_backward", lambda: backward(ref), lambda: backward(cpu), compare)


def fuzz_pool(data):
    dtype = draw_dtype(data)
    n = data.draw(st.sampled_from((1, 2, 0)))
    h, w = data.draw(st.integers(1, 17)), data.draw(st.integers(1, 17))
    c = data.draw(st.sampled_from((1, 2, 3, 5, 8, 9, 17)))
    pool, stride, _, padding = draw_geometry(data, pool=True)
    x = draw_array(data, (n, h, w, c), dtype)
    for kind in ("max", "avg"):
        fwd = {"max": "maxpool2d_forward", "avg": "avgpool2d_forward"}[kind]

        def compare(want, got, kind=kind):
            if kind == "max":
                np.testing.assert_array_equal(got[0], want[0], err_msg="maxpool values")
                # A window whose real cells are all -Inf: the reference pads
                # with -Inf and may name a padding cell (-1); the C kernels
                # name the first real cell (padding never wins).
                real = want[0] != -np.inf
                np.testing.assert_array_equal(got[1][real], want[1][real],
                                              err_msg="maxpool argmax")
                positions = got[1][~real]
                assert ((positions >= 0) & (positions < x[0].size)).all()
                assert (x.reshape(len(x), -1)[np.nonzero(~real)[0], positions] == -np.inf).all()
            else:
                assert_close(want, got, max(finite_scale(x), 1.0) * 4, dtype, "avgpool", 64)

        both(fwd, lambda: getattr(ref, fwd)(*copies(x), pool, stride, padding),
             lambda: getattr(cpu, fwd)(*copies(x), pool, stride, padding), compare)
        try:
            y = getattr(ref, fwd)(x, pool, stride, padding)
        except REFERENCE_REFUSALS:
            continue
        yv = y[0] if kind == "max" else y
        dy = draw_array(data, yv.shape, dtype, specials=False)
        if kind == "max":
            argmax = y[1]
            if data.draw(st.integers(0, 9)) == 0 and argmax.size:   # a hostile position
                argmax = argmax.copy()
                argmax.reshape(-1)[0] = data.draw(st.sampled_from((-1, 2**31 - 1, h * w * c)))
            both("maxpool2d_backward",
                 lambda: ref.maxpool2d_backward(argmax, dy.copy(), pool, stride, padding,
                                                np.empty(x.shape, dtype)),
                 lambda: cpu.maxpool2d_backward(argmax, dy.copy(), pool, stride, padding,
                                                np.empty(x.shape, dtype)),
                 lambda want, got: assert_close(want, got, finite_scale(dy) * 64, dtype,
                                                "maxpool backward", 64),
                 allow_index_error=True)
        else:
            both("avgpool2d_backward",
                 lambda: ref.avgpool2d_backward(dy.copy(), pool, stride, padding,
                                                np.empty(x.shape, dtype)),
                 lambda: cpu.avgpool2d_backward(dy.copy(), pool, stride, padding,
                                                np.empty(x.shape, dtype)),
                 lambda want, got: assert_close(want, got, finite_scale(dy) * 64, dtype,
                                                "avgpool backward", 64))


def fuzz_batchnorm(data):
    dtype = draw_dtype(data)
    shape = tuple(draw_dim(data) for _ in range(data.draw(st.integers(1, 3))))
    x = draw_array(data, shape, dtype, specials=data.draw(st.booleans()),
                   scale=data.draw(st.sampled_from((1.0, 1e3, 1e19))))
    c = shape[-1]
    both("batchnorm_stats", lambda: ref.batchnorm_stats(*copies(x)),
         lambda: cpu.batchnorm_stats(*copies(x)),
         lambda want, got: [assert_close(wa, ga, finite_scale(x) ** p * 8, dtype, "bn stats", 256)
                            for wa, ga, p in zip(want, got, (1, 2))])
    try:
        mean, var = ref.batchnorm_stats(x)
    except REFERENCE_REFUSALS:
        return
    mean, var = np.nan_to_num(mean), np.abs(np.nan_to_num(var, posinf=1.0))
    # The normalisation itself at magnitudes where (x - mean) * scale stays
    # far from overflow (the statistics above took the extremes; NaN/Inf
    # entries of x stay as they are).
    x = np.where(np.isfinite(x), np.clip(x, -1e15, 1e15), x).astype(x.dtype)
    mean = np.clip(mean, -1e15, 1e15).astype(mean.dtype)
    gamma = draw_array(data, (c,), dtype, specials=False) if data.draw(st.booleans()) else None
    beta = draw_array(data, (c,), dtype, specials=False) if data.draw(st.booleans()) else None
    eps = data.draw(st.sampled_from((1e-3, 1e-5, 1.0)))
    with np.errstate(all="ignore"):
        inv = 1.0 / np.sqrt(var.astype(np.float64) + eps)
        scale = (np.abs(np.nan_to_num(x.astype(np.float64), posinf=0, neginf=0)) + np.abs(mean)) \
            * inv * (1 if gamma is None else np.abs(gamma)) + 1
    both("batchnorm_apply",
         lambda: ref.batchnorm_apply(*copies(x, mean, var, gamma, beta), epsilon=eps),
         lambda: cpu.batchnorm_apply(*copies(x, mean, var, gamma, beta), epsilon=eps),
         lambda want, got: assert_close(want, got, scale * 8, dtype, "bn apply", 256))
    dy = draw_array(data, shape, dtype, specials=False)
    training = data.draw(st.booleans())

    def backward(module):
        dg = np.empty(c, dtype) if gamma is not None else None
        dbeta = np.empty(c, dtype)
        dx = np.empty(x.shape, dtype)
        module.batchnorm_backward(*copies(x, dy, mean, var, gamma), epsilon=eps,
                                  training=training, dgamma=dg, dbeta=dbeta, dx=dx)
        return dg, dbeta, dx

    def compare(want, got):
        s = np.float64(finite_scale(dy)) * (x.size + 2) * (1 + finite_scale(scale)) ** 2 * 8
        for wa, ga, what in zip(want, got, ("dgamma", "dbeta", "dx")):
            if wa is not None:
                assert_close(wa, ga, s, dtype, f"bn backward {what}", 256)

    both("batchnorm_backward", lambda: backward(ref), lambda: backward(cpu), compare)


def fuzz_optimizer_steps(data):
    dtype = draw_dtype(data)
    shape = (draw_dim(data, large=True),) if data.draw(st.booleans()) else \
        (draw_dim(data), draw_dim(data))
    p = draw_array(data, shape, dtype, specials=data.draw(st.integers(0, 3)) == 0)
    g = draw_array(data, shape, dtype, specials=data.draw(st.integers(0, 3)) == 0)
    s0 = np.abs(draw_array(data, shape, dtype, specials=False))
    s1 = np.abs(draw_array(data, shape, dtype, specials=False))
    lr = data.draw(st.sampled_from((0.1, 1e-3, 10.0, 1e30)))
    check_only = data.draw(st.booleans())
    rule = data.draw(st.sampled_from(("sgd", "adam", "rmsprop", "adagrad")))
    hyper = dict(momentum=data.draw(st.sampled_from((0.0, 0.9))),
                 nesterov=data.draw(st.booleans()),
                 weight_decay=data.draw(st.sampled_from((0.0, 1e-2))))

    def step(module, p, g, s0, s1):
        if rule == "sgd":
            bad = module.sgd_step(p, g, s0 if hyper["momentum"] else None, lr=lr,
                                  check_only=check_only, **hyper)
            states = (s0,)
        elif rule == "adam":
            bad = module.adam_step(p, g, s0, s1, lr=lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                                   step=3, weight_decay=hyper["weight_decay"],
                                   decoupled=hyper["nesterov"], check_only=check_only)
            states = (s0, s1)
        elif rule == "rmsprop":
            bad = module.rmsprop_step(p, g, s0, s1 if hyper["momentum"] else None, lr=lr, rho=0.9,
                                      momentum=hyper["momentum"], epsilon=1e-7,
                                      check_only=check_only)
            states = (s0, s1)
        else:
            bad = module.adagrad_step(p, g, s0, lr=lr, epsilon=1e-7, check_only=check_only)
            states = (s0,)
        return bad, p, states

    def prepared(module):
        arrays = copies(p, g, s0, s1)
        arrays[0] = np.ascontiguousarray(arrays[0])     # updated in place: no copies
        arrays[2], arrays[3] = np.ascontiguousarray(arrays[2]), np.ascontiguousarray(arrays[3])
        return step(module, *arrays)

    def compare(want, got):
        # check_only counts: the C kernels count elements, the reference values
        # (a NaN parameter and its NaN velocity are one element, two values).
        assert (want[0] > 0) == (got[0] > 0), \
            f"{rule}: {got[0]} non-finite elements, reference {want[0]} values"
        scale = (1 + finite_scale(p, want[1], *want[2])) * (1 + lr) * \
            (1 + finite_scale(g)) ** 2 * 64
        # Where a parameter is already NaN/Inf it stays non-finite, but may turn
        # from Inf to NaN (the C step adds weight_decay * param even when
        # weight_decay is 0), and so may its state: the rest is compared.
        finite = np.isfinite(p)
        assert not np.isfinite(got[1][~finite]).any(), f"{rule}: a NaN/Inf parameter became finite"
        assert_close(want[1][finite], got[1][finite], scale, dtype, f"{rule} param", 256)
        for ws, gs in zip(want[2], got[2]):
            assert_close(ws[finite], gs[finite], scale, dtype, f"{rule} state", 256)

    both(f"{rule}_step", lambda: prepared(ref), lambda: prepared(cpu), compare)


def fuzz_optimizer_step_many(data):
    dtype = draw_dtype(data, allow_bad=False)
    count = data.draw(st.integers(0, 4))
    shapes = [(draw_dim(data),) for _ in range(count)]
    params = [np.ascontiguousarray(draw_array(data, s, dtype, specials=False)) for s in shapes]
    grads = [draw_array(data, s, dtype, specials=data.draw(st.integers(0, 5)) == 0)
             for s in shapes]
    rule = data.draw(st.sampled_from(("sgd", "adam", "rmsprop", "adagrad", "nonsense")))
    mode = data.draw(st.sampled_from(("apply", "check", "check_apply", "nonsense")))
    momentum = data.draw(st.sampled_from((0.0, 0.9)))

    def states(i):
        need0 = rule in ("adam", "rmsprop", "adagrad") or (rule == "sgd" and momentum)
        need1 = rule == "adam" or (rule == "rmsprop" and momentum)
        return (np.zeros(shapes[i], dtype) if need0 else None,
                np.zeros(shapes[i], dtype) if need1 else None)

    st_pairs = [states(i) for i in range(count)]

    def run_on(module):
        ps = copies(*params)
        s0 = [None if s is None else s.copy() for s, _ in st_pairs]
        s1 = [None if s is None else s.copy() for _, s in st_pairs]
        bad = module.optimizer_step(rule, ps, copies(*grads), s0, s1, lr=0.1, mode=mode,
                                    momentum=momentum)
        return bad, ps

    def compare(want, got):
        assert want[0] == got[0], f"optimizer_step {rule} {mode}: first bad {got[0]}, ref {want[0]}"
        for wp, gp, g in zip(want[1], got[1], grads):
            assert_close(wp, gp, (1 + finite_scale(wp)) * (1 + finite_scale(g)) * 64, dtype,
                         f"optimizer_step {rule}", 256)

    both("optimizer_step", lambda: run_on(ref), lambda: run_on(cpu), compare)


def fuzz_rows(data):
    dtype = data.draw(st.sampled_from(FLOATS + (np.int16, np.uint8, np.bool_, object, "U2")))
    n = draw_dim(data, large=True)
    rest = tuple(draw_dim(data) for _ in range(data.draw(st.integers(0, 2))))
    x = np.ascontiguousarray(draw_array(data, (n,) + rest, np.float64, specials=False))
    x = x.astype(dtype)
    count = draw_dim(data)
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    low, high = (-2, n + 2) if data.draw(st.integers(0, 5)) == 0 else (0, max(n, 1))
    index = rng.integers(low, high, count) if n or low < 0 else np.zeros(0, np.int64)

    def compare(want, got):
        np.testing.assert_array_equal(got, want)

    both("gather_rows", lambda: ref.gather_rows(x, index), lambda: cpu.gather_rows(x, index),
         compare, allow_index_error=True)
    y = draw_array(data, (n,) + rest, draw_dtype(data))
    both("find_nonfinite", lambda: ref.find_nonfinite(y), lambda: cpu.find_nonfinite(y),
         lambda want, got: (want == got) or pytest.fail(f"find_nonfinite {got} != {want}"))


def fuzz_runtime(data):
    n = data.draw(st.sampled_from((1, 2, 0, -1, 512, 513, 2**31, 2**63, 1.5, "2", None, True)))
    before = cpu.get_num_threads()
    try:
        got = outcome("set_num_threads", cpu.set_num_threads, n)
        if isinstance(got, Refused):
            assert isinstance(got.error, (ValueError, TypeError))
            assert cpu.get_num_threads() == before
    finally:
        cpu.set_num_threads(before)
    level = data.draw(st.sampled_from(("generic", "avx2+fma", "avx2", "sse", 3, None)))
    previous = cpu.backend_info()["simd"]
    try:
        got = outcome("set_simd", cpu.set_simd, level)
        if isinstance(got, Refused):
            assert isinstance(got.error, (ValueError, TypeError))
    finally:
        cpu.set_simd(previous)


# ---------------------------------------------------------------- layers, losses, optimizers

def draw_layer(data):
    """(a layer factory, per-sample input shape) for a random public layer."""
    L = rp.layers
    act = data.draw(st.sampled_from(("relu", "linear", "sigmoid", "tanh", "elu", "gelu", "swish",
                                     "softmax", None)))
    kind = data.draw(st.sampled_from(("Dense", "Conv2D", "Conv1D", "MaxPool2D", "AvgPool2D",
                                      "MaxPool1D", "AvgPool1D", "GlobalAvgPool2D",
                                      "BatchNormalization", "Activation", "LeakyReLU", "ELU",
                                      "PReLU", "Flatten", "Dropout", "Residual")))
    units = data.draw(st.sampled_from((1, 2, 3, 7, 16, 0, -1)))
    hw = (data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)))
    ch = data.draw(st.sampled_from((1, 2, 3, 5)))
    k = data.draw(st.integers(1, 3))
    s = data.draw(st.integers(1, 3))
    padding = data.draw(st.sampled_from(("valid", "same", 1, "nonsense")))
    if kind == "Dense":
        return (lambda: L.Dense(units, activation=act)), (data.draw(st.sampled_from((1, 5, 13))),)
    if kind == "Conv2D":
        return (lambda: L.Conv2D(max(units, 1) if units else 0, k, strides=s, padding=padding,
                                 activation=act)), hw + (ch,)
    if kind == "Conv1D":
        return (lambda: L.Conv1D(max(units, 1), k, strides=s, padding=padding,
                                 activation=act)), (hw[1], ch)
    if kind in ("MaxPool2D", "AvgPool2D"):
        return (lambda: getattr(L, kind)(k, strides=s, padding=padding)), hw + (ch,)
    if kind in ("MaxPool1D", "AvgPool1D"):
        return (lambda: getattr(L, kind)(k, strides=s, padding=padding)), (hw[1], ch)
    if kind == "GlobalAvgPool2D":
        return L.GlobalAvgPool2D, hw + (ch,)
    if kind == "BatchNormalization":
        axis = data.draw(st.sampled_from((-1, 1, 2, 0, 5)))
        return (lambda: L.BatchNormalization(axis=axis)), hw + (ch,)
    if kind == "Activation":
        return (lambda: L.Activation(act or "linear")), (data.draw(st.sampled_from((1, 4, 9))),)
    if kind in ("LeakyReLU", "ELU"):
        alpha = data.draw(st.sampled_from((0.1, 1.0, 1e300, -1.0)))
        return (lambda: getattr(L, kind)(alpha)), (6,)
    if kind == "PReLU":
        return L.PReLU, hw + (ch,)
    if kind == "Flatten":
        return L.Flatten, hw + (ch,)
    if kind == "Dropout":
        rate = data.draw(st.sampled_from((0.0, 0.5, 1.0, -0.1)))
        return (lambda: L.Dropout(rate)), (5,)
    return (lambda: L.Residual([L.Dense(6, activation="relu"), L.Dense(6)])), (6,)


def fuzz_layers(data):
    make, shape = draw_layer(data)
    dtype = data.draw(st.sampled_from(("float32", "float64")))
    batch = data.draw(st.sampled_from((1, 2, 5)))
    seed = data.draw(st.integers(0, 1000))

    def build(module):
        layer = make()
        layer.build(shape, dtype, np.random.default_rng(seed), backend=module)
        return layer

    layers = {}
    for name, module in (("ref", ref), ("cpu", cpu)):
        got = outcome("layer_build", build, module)
        if isinstance(got, Refused):
            assert isinstance(got.error, (ValueError, TypeError))
            layers[name] = None
        else:
            layers[name] = got
    if layers["cpu"] is None or layers["ref"] is None:
        assert layers["cpu"] is None, "the C backend built a layer the reference refused"
        return
    x = draw_array(data, (batch,) + shape, np.dtype(dtype), specials=False)
    training = data.draw(st.booleans()) and type(layers["cpu"]).__name__ != "Dropout"
    y_ref = outcome("layer_forward", layers["ref"].forward, np.ascontiguousarray(x), training)
    y_cpu = outcome("layer_forward", layers["cpu"].forward, np.ascontiguousarray(x), training)
    if isinstance(y_cpu, Refused):
        assert isinstance(y_cpu.error, (ValueError, TypeError))
        return
    assert not isinstance(y_ref, Refused), f"reference refused: {y_ref.error!r}"
    scale = (1 + finite_scale(x)) * (1 + sum(finite_scale(p) for p in
                                             layers["cpu"].params.values())) ** 2 * 64
    assert_close(y_ref, y_cpu, scale * (x[0].size + 2), np.dtype(dtype),
                 f"{type(layers['cpu']).__name__} forward", 256)
    dy = draw_array(data, y_cpu.shape, np.dtype(dtype), specials=False)
    dx_ref = outcome("layer_backward", layers["ref"].backward, np.ascontiguousarray(dy))
    dx_cpu = outcome("layer_backward", layers["cpu"].backward, np.ascontiguousarray(dy))
    if isinstance(dx_cpu, Refused) or isinstance(dx_ref, Refused):
        assert isinstance(dx_cpu, Refused) and isinstance(dx_ref, Refused)
        return
    scale = scale * (1 + finite_scale(dy)) * (y_cpu.size + x.size + 2)
    if dx_ref is not None:
        assert_close(dx_ref, dx_cpu, scale, np.dtype(dtype), "layer dx", 256)
    for key in layers["ref"].grads:
        assert_close(layers["ref"].grads[key], layers["cpu"].grads[key], scale,
                     np.dtype(dtype), f"layer grad {key}", 256)


LOSS_NAMES = ("mse", "mae", "binary_crossentropy", "categorical_crossentropy", "hinge",
              "sparse_categorical_crossentropy", "nonsense")


def fuzz_losses(data):
    name = data.draw(st.sampled_from(LOSS_NAMES))
    try:
        loss = losses.get(name)
    except (ValueError, TypeError):
        return
    n, c = draw_dim(data), data.draw(st.sampled_from((1, 2, 3, 10, 0)))
    dtype = data.draw(st.sampled_from(FLOATS))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    pred = draw_array(data, (n, c), dtype, specials=data.draw(st.integers(0, 4)) == 0,
                      scale=1.0, positive=name.endswith("crossentropy"))
    if name.endswith("crossentropy"):
        pred = np.ascontiguousarray(pred / np.maximum(pred.sum(1, keepdims=True), 1e-3))
    kind = data.draw(st.sampled_from(("ids", "rows", "bad")))
    if kind == "ids":
        y = rng.integers(0, max(c, 1), n)
    elif kind == "rows":
        y = np.eye(max(c, 1))[rng.integers(0, max(c, 1), n)][:, :c].astype(dtype)
    else:
        y = rng.standard_normal((n + 1, c))
    for fn in (loss, loss.gradient):
        got = outcome(f"loss_{name}", fn, y, pred)
        if isinstance(got, Refused):
            assert isinstance(got.error, (ValueError, TypeError))
        elif np.isfinite(pred).all():
            assert np.all(np.isfinite(got)), f"{name}: non-finite result on finite input"


def fuzz_optimizers(data):
    kind = data.draw(st.sampled_from(("SGD", "Adam", "RMSprop", "Adagrad", "AdamW")))
    if not hasattr(optim, kind):
        return
    lr = data.draw(st.sampled_from((0.1, 1e-3, 0.0, -1.0, float("nan"), "x")))
    dtype = data.draw(st.sampled_from(FLOATS))
    shapes = [(draw_dim(data),), (draw_dim(data), draw_dim(data))]
    params = [np.ascontiguousarray(draw_array(data, s, dtype, specials=False)) for s in shapes]
    grads = [np.ascontiguousarray(draw_array(data, s, dtype, specials=False)) for s in shapes]
    odd = data.draw(st.sampled_from((None, "list", "dtype", "shape")))

    def run_on(module):
        opt = getattr(optim, kind)(lr=lr)
        opt.backend = module
        ps, gs = copies(*params), copies(*grads)
        items = [(f"p{i}", p, g) for i, (p, g) in enumerate(zip(ps, gs))]
        if odd == "list" and items:
            items[0] = ("p0", ps[0].tolist(), gs[0])
        elif odd == "dtype" and items:
            items[0] = ("p0", ps[0], gs[0].astype(np.float16))
        elif odd == "shape" and items:
            items[0] = ("p0", ps[0], np.zeros(7, dtype))
        for _ in range(2):
            opt.step(items)
        return ps

    def compare(want, got):
        for wp, gp in zip(want, got):
            assert_close(wp, gp, (1 + finite_scale(wp)) * 64, dtype, f"{kind} step", 256)

    both(f"optimizer_{kind}", lambda: run_on(ref), lambda: run_on(cpu), compare)


TARGETS = {
    "gemm": fuzz_gemm, "activation": fuzz_activation, "dense": fuzz_dense,
    "softmax": fuzz_softmax, "conv2d": fuzz_conv2d, "pool": fuzz_pool,
    "batchnorm": fuzz_batchnorm, "optimizer_steps": fuzz_optimizer_steps,
    "optimizer_step_many": fuzz_optimizer_step_many, "rows": fuzz_rows,
    "runtime": fuzz_runtime, "layers": fuzz_layers, "losses": fuzz_losses,
    "optimizers": fuzz_optimizers,
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz(target):
    run(target, TARGETS[target])


def test_fuzz_call_count(capsys):
    """Reports the calls made (and checks the fuzzing was not vacuous)."""
    total = sum(CALLS.values())
    with capsys.disabled():
        print(f"\nfuzz: {total} calls over {len(CALLS)} targets "
              f"({'%g s' % FUZZ_SECONDS if FUZZ_SECONDS > 0 else '%d examples each' % EXAMPLES})"
              f": " + ", ".join(f"{k} {v}" for k, v in sorted(CALLS.items())))
    report = os.environ.get("RETROPROP_FUZZ_REPORT")
    if report:
        with open(report, "w") as f:
            f.write(f"{total}\n")
    if len(CALLS) >= len(TARGETS):       # the whole file ran
        assert total >= 10 * EXAMPLES
