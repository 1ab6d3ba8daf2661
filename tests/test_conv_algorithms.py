"""Every convolution algorithm (backend.conv2d_force_algorithm: im2col, direct,
implicit, winograd), forced in turn, against the NumPy reference in float64
and against finite differences of its own forward; the selector's choices;
Winograd's error bound; bit-identical results across thread counts; both
instruction sets; widths 1..17 of every vector the Winograd kernels use
(channels, filters, output width).

Winograd F(4x4, 3x3) is float32 only and less exact than a direct sum (its
transforms multiply by up to 8 and divide by 24). The bound tested here,
for y and likewise for dx and dW:

    max |y - exact| <= WINOGRAD_BOUND * max|x| * max_f sum |w[..., f]|

i.e. relative to the largest output any input of that magnitude could give.
Measured on 16-256 channels (normal and uniform data): at most ~6e-7.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import cpu
from retroprop.backend import numpy_ref as ref

ALGORITHMS = ("im2col", "direct", "implicit", "winograd")
HAVE_AVX2 = cpu.backend_info()["simd_best"] != "generic"
WINOGRAD_BOUND = 4e-6


class forced:
    """Context manager: every convolution runs with algorithm ``name`` where it applies."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = cpu.conv2d_force_algorithm(self.name)
        return self

    def __exit__(self, *exc):
        cpu.conv2d_force_algorithm(self.previous)


def geometry(k, padding):
    return dict(stride=(1, 1), dilation=(1, 1), padding=padding)


def random_case(rng, n, h, w, c, f, k=(3, 3)):
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = (rng.standard_normal(k + (c, f)) / np.sqrt(k[0] * k[1] * c)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    return x, wt, b


def reference(x, w, b, activation, geo, dy):
    """(y, dw, db, dx) of the NumPy backend in float64."""
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    y = ref.conv2d_forward(x64, w64, b64, activation, **geo)
    dw, db, dx = np.empty_like(w64), np.empty_like(b64), np.empty_like(x64)
    ref.conv2d_backward(x64, w64, y, dy.astype(np.float64), activation, dw, db, dx, **geo)
    return y, dw, db, dx


def run_cpu(x, w, b, activation, geo, dy, y_for_backward=None):
    y = cpu.conv2d_forward(x, w, b, activation, **geo)
    dw, db, dx = np.full_like(w, np.nan), np.full_like(b, np.nan), np.full_like(x, np.nan)
    cpu.conv2d_backward(x, w, y if y_for_backward is None else y_for_backward, dy, activation,
                        dw, db, dx, **geo)
    return y, dw, db, dx


def bounds(x, w, b, dy):
    """The scales errors are measured against, for y, dw, db and dx: the largest
    value each could take for inputs of these magnitudes (the module docstring)."""
    y_scale = np.abs(x).max() * np.abs(w).sum(axis=(0, 1, 2)).max() + np.abs(b).max()
    dw_scale = np.abs(x).reshape(-1, x.shape[-1]).sum(axis=0).max() * np.abs(dy).max()
    db_scale = np.abs(dy).reshape(-1, dy.shape[-1]).sum(axis=0).max()
    dx_scale = np.abs(dy).max() * np.abs(w).sum(axis=(0, 1, 3)).max()
    return y_scale, dw_scale, db_scale, dx_scale


def check_errors(got, want, scales, tol, where):
    for name, g, r, scale in zip(("y", "dw", "db", "dx"), got, want, scales):
        err = np.abs(g - r).max() / max(scale, 1e-30)
        assert err <= tol, f"{where} {name}: error {err:.2e} > {tol:.0e}"


# ---------------------------------------------------------------- the selector

def test_algorithm_names_and_bad_names():
    assert cpu.CONV_ALGORITHMS == ("auto",) + ALGORITHMS
    with pytest.raises(ValueError, match="conv2d algorithm"):
        cpu.conv2d_force_algorithm("fft")
    x, w, _ = random_case(np.random.default_rng(0), 1, 5, 5, 4, 4)
    with pytest.raises(ValueError, match="conv2d algorithm"):
        cpu.conv2d_algorithm(x, w, name="gemm")
    assert cpu.conv2d_force_algorithm("auto") == "auto"


@pytest.mark.skipif(not HAVE_AVX2, reason="the table's choices are for AVX2")
@pytest.mark.parametrize("shape, kernel, dtype, stride, activation, expected", [
    ((64, 32, 32, 32), (3, 3, 32, 32), np.float32, 1, "linear", "winograd"),   # CIFAR CNN
    ((64, 16, 16, 64), (3, 3, 64, 64), np.float32, 1, "relu", "winograd"),
    ((64, 32, 32, 16), (3, 3, 16, 16), np.float32, 1, "linear", "winograd"),   # ResNet stack
    ((64, 32, 32, 3), (3, 3, 3, 32), np.float32, 1, "linear", "implicit"),     # first layer
    ((64, 32, 32, 32), (3, 3, 32, 32), np.float64, 1, "linear", "im2col"),     # float64: exact
    ((64, 32, 32, 32), (3, 3, 32, 32), np.float32, 2, "linear", "implicit"),   # stride 2
    ((64, 28, 28, 1), (5, 5, 1, 6), np.float32, 1, "relu", "direct"),          # LeNet conv1
    ((64, 14, 14, 6), (5, 5, 6, 16), np.float32, 1, "relu", "implicit"),       # LeNet conv2
    ((8, 8, 8, 8), (3, 3, 8, 8), np.float32, 1, "linear", "winograd"),
    ((8, 8, 8, 4), (3, 3, 4, 16), np.float32, 1, "linear", "implicit"),        # 4 channels
    ((1, 4, 4, 16), (3, 3, 16, 16), np.float32, 1, "linear", "implicit"),      # one tile
    ((64, 8, 8, 20), (3, 3, 20, 20), np.float32, 1, "elu", "winograd"),
    ((64, 8, 8, 20), (1, 1, 20, 20), np.float32, 1, "linear", "im2col"),       # pointwise
])
def test_selector_choices(shape, kernel, dtype, stride, activation, expected):
    x = np.zeros(shape, dtype)
    w = np.zeros(kernel, dtype)
    pad = (kernel[0] // 2, kernel[0] // 2, kernel[1] // 2, kernel[1] // 2)
    got = cpu.conv2d_algorithm(x, w, activation, stride=(stride, stride), padding=pad)
    assert got == expected
    assert cpu.conv2d_algorithm(x, w, activation, stride=(stride, stride), padding=pad,
                                name=expected)


def test_applicability():
    x32, w32 = np.zeros((2, 6, 6, 16), np.float32), np.zeros((3, 3, 16, 16), np.float32)
    x64, w64 = x32.astype(np.float64), w32.astype(np.float64)
    pad = (1, 1, 1, 1)
    assert cpu.conv2d_algorithm(x32, w32, padding=pad, name="winograd")
    assert cpu.conv2d_algorithm(x32, w32, padding=pad, name="im2col")
    assert not cpu.conv2d_algorithm(x64, w64, padding=pad, name="winograd")   # float32 only
    assert not cpu.conv2d_algorithm(x64, w64, padding=pad, name="implicit")
    assert not cpu.conv2d_algorithm(x32, w32, stride=(2, 2), padding=pad, name="winograd")
    assert not cpu.conv2d_algorithm(x32, w32, dilation=(2, 2), padding=(2, 2, 2, 2),
                                    name="winograd")
    assert not cpu.conv2d_algorithm(x32, np.zeros((5, 5, 16, 16), np.float32),
                                    padding=(2, 2, 2, 2), name="winograd")
    assert not cpu.conv2d_algorithm(x32, w32, padding=pad, name="direct")     # 16 filters > 8
    # forcing an algorithm that does not apply leaves the table's choice
    with forced("winograd"):
        assert cpu.conv2d_algorithm(x64, w64, padding=pad) == "im2col"
    with forced("im2col"):
        assert cpu.conv2d_algorithm(x32, w32, padding=pad) == "im2col"


def test_environment_variable_forces_an_algorithm():
    code = ("from retroprop.backend import cpu; import numpy as np; "
            "x = np.zeros((64, 32, 32, 32), np.float32); w = np.zeros((3, 3, 32, 32), np.float32); "
            "print(cpu.conv2d_algorithm(x, w, padding=(1, 1, 1, 1)))")
    env = dict(os.environ, RETROPROP_CONV_ALGORITHM="im2col")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "im2col"
    env["RETROPROP_CONV_ALGORITHM"] = "nonsense"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "RETROPROP_CONV_ALGORITHM" in out.stderr


# ---------------------------------------------------------------- every algorithm, forced

# (n, h, w, c, f, kernel, padding): awkward sizes; each algorithm runs where it applies
CASES = [
    (1, 1, 1, 1, 1, (3, 3), (1, 1, 1, 1)),
    (2, 5, 7, 3, 5, (3, 3), (1, 1, 1, 1)),
    (3, 13, 11, 17, 13, (3, 3), (0, 0, 0, 0)),
    (2, 9, 10, 16, 32, (3, 3), (2, 0, 1, 2)),      # uneven padding
    (1, 6, 5, 20, 40, (3, 3), (3, 3, 3, 3)),       # windows wholly in the padding
    (20, 12, 12, 16, 16, (3, 3), (1, 1, 1, 1)),    # enough lines for the blocked paths
    (2, 8, 8, 6, 7, (5, 5), (2, 2, 2, 2)),
    (64, 9, 9, 1, 6, (5, 5), (2, 2, 2, 2)),        # direct (row buffers)
    (2, 6, 6, 12, 16, (1, 1), (0, 0, 0, 0)),       # pointwise
]


def expected_to_apply(algorithm, c, f, k, simd, stride=1):
    """conv_select.c's applicability rules, written out (float32, undilated)."""
    pointwise = k == (1, 1) and stride == 1
    patch = k[0] * k[1] * c
    if algorithm == "direct":
        return f <= 8 and patch <= 64 and not pointwise
    if algorithm == "implicit":
        return simd == "avx2+fma" and f % 16 == 0 and patch <= 1152 and not pointwise
    if algorithm == "winograd":
        return k == (3, 3) and stride == 1
    return True


@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}-{}x{}x{}-{}@{}x{}-p{}".format(
    *c[:5], *c[5], "".join(map(str, c[6]))))
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_each_algorithm_matches_reference(case, algorithm, activation, simd):
    n, h, w, c, f, k, padding = case
    rng = np.random.default_rng(n * 100 + c * 10 + f)
    x, wt, b = random_case(rng, n, h, w, c, f, k)
    geo = geometry(k, padding)
    applies = expected_to_apply(algorithm, c, f, k, simd)
    assert cpu.conv2d_algorithm(x, wt, activation, name=algorithm, **geo) == applies
    if not applies:
        with forced(algorithm):     # forcing it leaves the table's choice
            assert cpu.conv2d_algorithm(x, wt, activation, **geo) != algorithm
        return
    y_ref = ref.conv2d_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                               activation, **geo)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    want = reference(x, wt, b, activation, geo, dy)
    with forced(algorithm):
        assert cpu.conv2d_algorithm(x, wt, activation, **geo) == algorithm
        # backward from the reference's y: relu's mask must not flip on an output
        # within rounding of zero
        got = run_cpu(x, wt, b, activation, geo, dy, y_for_backward=want[0].astype(np.float32))
    # a direct sum of float32 values: ~1e-7 of these scales; Winograd: its bound
    tol = WINOGRAD_BOUND if algorithm == "winograd" else 1e-6
    check_errors(got, want, bounds(x, wt, b, dy), tol, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_backward_is_the_adjoint_of_the_forward(algorithm, simd):
    """Finite differences of the algorithm's own forward: with no activation the
    loss L = <dy, conv(x, w)> is linear in w and in x, so the central difference
    (L(w + v) - L(w - v)) / 2 is <dw, v> up to rounding, and likewise for x."""
    rng = np.random.default_rng(7)
    n, h, w, c, f = (20, 12, 11, 16, 16) if algorithm != "direct" else (20, 12, 11, 2, 6)
    x, wt, b = random_case(rng, n, h, w, c, f)
    geo = geometry((3, 3), (1, 1, 1, 1))
    # (implicit is AVX2 only: the portable build runs the table's choice)
    assert cpu.conv2d_algorithm(x, wt, name=algorithm, **geo) == (simd != "generic" or
                                                                  algorithm != "implicit")
    with forced(algorithm):
        y = cpu.conv2d_forward(x, wt, None, "linear", **geo)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dw, dx = np.empty_like(wt), np.empty_like(x)
        cpu.conv2d_backward(x, wt, y, dy, "linear", dw, None, dx, **geo)

        def loss(xv, wv):
            return float(np.dot(dy.ravel().astype(np.float64),
                                cpu.conv2d_forward(xv, wv, None, "linear", **geo).ravel()))
        v = rng.standard_normal(wt.shape).astype(np.float32)
        u = rng.standard_normal(x.shape).astype(np.float32)
        fd_w = (loss(x, wt + v) - loss(x, wt - v)) / 2
        fd_x = (loss(x + u, wt) - loss(x - u, wt)) / 2
    an_w = float(np.dot(dw.ravel().astype(np.float64), v.ravel()))
    an_x = float(np.dot(dx.ravel().astype(np.float64), u.ravel()))
    assert abs(fd_w - an_w) <= 1e-4 * max(abs(an_w), 1.0), (fd_w, an_w)
    assert abs(fd_x - an_x) <= 1e-4 * max(abs(an_x), 1.0), (fd_x, an_x)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_results_do_not_depend_on_the_thread_count(algorithm):
    rng = np.random.default_rng(3)
    x, wt, b = random_case(rng, 24, 14, 13, 16, 16)
    if algorithm == "direct":
        x, wt, b = random_case(rng, 24, 14, 13, 3, 6)
    geo = geometry((3, 3), (1, 1, 1, 1))
    assert cpu.conv2d_algorithm(x, wt, "relu", name=algorithm, **geo) == \
        (algorithm != "implicit" or HAVE_AVX2)
    y0 = cpu.conv2d_forward(x, wt, b, "relu", **geo)
    dy = rng.standard_normal(y0.shape).astype(np.float32)
    before = cpu.get_num_threads()
    results = []
    try:
        with forced(algorithm):
            for threads in (1, 2, 5):
                cpu.set_num_threads(threads)
                results.append(run_cpu(x, wt, b, "relu", geo, dy))
    finally:
        cpu.set_num_threads(before)
    for other in results[1:]:
        for one, two in zip(results[0], other):
            np.testing.assert_array_equal(one, two)


# ---------------------------------------------------------------- Winograd's vectors and tiles

@pytest.mark.parametrize("width", range(1, 18))
def test_winograd_every_width(width, simd):
    """Channels, filters and output width from 1 to 17: every partial vector of
    the transforms (VLEN 8 with AVX2, 4 portable), partial microkernel columns
    (16 / 8 filters) and partial output tiles (4 pixels)."""
    rng = np.random.default_rng(300 + width)
    for c, f, w in ((width, 16, 9), (16, width, 9), (8, 8, width)):
        x, wt, b = random_case(rng, 3, 7, w, c, f)
        geo = geometry((3, 3), (1, 1, 1, 1))
        dy = rng.standard_normal((3, 7, w, f)).astype(np.float32)
        want = reference(x, wt, b, "linear", geo, dy)
        with forced("winograd"):
            got = run_cpu(x, wt, b, "linear", geo, dy)
        check_errors(got, want, bounds(x, wt, b, dy), WINOGRAD_BOUND, f"c={c} f={f} w={w}")


@pytest.mark.skipif(not HAVE_AVX2, reason="one instruction set only")
def test_winograd_paths_agree():
    """The AVX2 and portable builds of the Winograd kernels: the same sums in
    the same order, up to the fused multiply-adds of the AVX2 build."""
    rng = np.random.default_rng(5)
    x, wt, b = random_case(rng, 4, 10, 9, 24, 20)
    geo = geometry((3, 3), (1, 1, 1, 1))
    dy = rng.standard_normal((4, 10, 9, 20)).astype(np.float32)
    previous = cpu.backend_info()["simd"]
    results = []
    try:
        with forced("winograd"):
            for path in ("avx2+fma", "generic"):
                cpu.set_simd(path)
                results.append(run_cpu(x, wt, b, "relu", geo, dy))
    finally:
        cpu.set_simd(previous)
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5 * np.abs(b_).max())


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "elu", "leaky_relu", "step"])
def test_winograd_other_activations(activation):
    """Activations the output transform does not apply in registers go through
    the scalar formulas after the store."""
    rng = np.random.default_rng(11)
    x, wt, b = random_case(rng, 2, 9, 6, 16, 16)
    geo = geometry((3, 3), (1, 1, 1, 1))
    with forced("winograd"):
        y = cpu.conv2d_forward(x, wt, b, activation, **geo)
    want = ref.conv2d_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                              activation, **geo)
    if activation == "step":   # values within rounding of 0 may step either way
        assert np.mean(y != want) < 1e-3
    else:
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_layers_train_the_same_with_every_algorithm():
    """A small Conv + BN + ReLU model trained for a few steps with each algorithm
    forced: the losses agree (Winograd within its rounding)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 10, 10, 16)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    losses = {}
    for algorithm in ALGORITHMS:
        L = rp.layers
        model = rp.Sequential([L.Conv2D(16, 3, padding="same"), L.BatchNormalization(),
                               L.Activation("relu"), L.GlobalAvgPool2D(),
                               L.Dense(3, activation="softmax")], input_shape=(10, 10, 16), seed=1)
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1), metrics=[])
        with forced(algorithm):
            history = trainer.fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=False)
        losses[algorithm] = history.history["loss"]
    for algorithm in ALGORITHMS[1:]:
        np.testing.assert_allclose(losses[algorithm], losses["im2col"], rtol=1e-4)
