"""Regression tests of issue 23 (reliability): inputs a hostile or careless
user can give that once crashed the interpreter, read out of bounds, or
gave a silent wrong answer. Each must now be a clear ValueError/TypeError
naming what was wrong (or a right answer).

Pooling's vector paths: tests/test_pool_vector_paths.py; fork:
tests/test_fork.py; hostile files: tests/test_hostile_files.py; the killed
save: tests/test_io.py; random calls of everything: tests/test_fuzz.py.
"""
import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import cpu
from retroprop.backend import numpy_ref as ref

INT_MAX = 2**31 - 1


# ---------------------------------------------------------------- 1. conv geometry overflow

def test_saved_conv_with_huge_stride_and_padding_is_refused_not_a_segfault(tmp_path):
    # The layer: ix0 = ox * stride_w - pad_left overflowed an int in C.
    layer = rp.layers.Conv2D(16, (2, 3), strides=(1, INT_MAX), dilation_rate=(3, 1),
                             padding=(1, INT_MAX))
    model = rp.Sequential([layer], input_shape=(3, 3, 1), seed=0)
    path = tmp_path / "huge.rpz"
    model.save(path)
    loaded = rp.load_model(path)
    with pytest.raises(ValueError, match="padded width .* exceeds the kernel limit"):
        loaded.predict(np.ones((2, 3, 3, 1), np.float32))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(stride=(1, 2**64)), "stride"),
    (dict(padding=(0, 0, 0, 2**64)), "padded width"),
    (dict(padding=(2**40, 0, 0, 0)), "padded height"),
    (dict(padding=(0, 0, INT_MAX, INT_MAX)), "padded width"),
    (dict(dilation=(2**63, 1)), "larger than the input"),
    (dict(stride=(float("inf"), 1)), "stride"),
])
def test_conv_binding_refuses_huge_geometry_with_value_error(kwargs, pattern):
    """Not OverflowError from Cython's int conversion, not a huge allocation."""
    x = np.ones((1, 3, 3, 1), np.float32)
    w = np.ones((2, 3, 1, 2), np.float32)
    with pytest.raises(ValueError, match=pattern):
        cpu.conv2d_forward(x, w, None, "linear", **kwargs)
    with pytest.raises(ValueError, match=pattern):
        cpu.conv2d_backward(x, w, np.ones((1, 2, 1, 2), np.float32),
                            np.ones((1, 2, 1, 2), np.float32), "linear",
                            np.empty_like(w), **kwargs)


def test_conv_layer_with_2_62_padding_is_refused_before_any_allocation():
    model = rp.Sequential([rp.layers.Conv2D(2, (2, 3), padding=(0, 2**62))],
                          input_shape=(3, 3, 1), seed=0)
    with pytest.raises(ValueError, match="exceeds the kernel limit"):
        model.predict(np.ones((1, 3, 3, 1), np.float32))


def test_conv_with_positions_near_the_int_limit_is_right():
    """Strides and padding past 2**30 whose padded extent still fits a C int:
    window (1, 1) starts at input (0, 1), every other window lies in the
    padding. The kernels form these positions in 64 bits."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 2))
    w = rng.standard_normal((2, 3, 2, 4))
    big = 2**30 + 7
    args = dict(stride=(big, big), dilation=(2, 1), padding=(big, 0, big - 1, 0))
    for simd in ("avx2+fma", "generic"):
        previous = cpu.set_simd(simd)
        try:
            for dtype in (np.float32, np.float64):
                got = cpu.conv2d_forward(x.astype(dtype), w.astype(dtype), None, "linear", **args)
                want = np.zeros((2, 2, 2, 4))
                want[:, 1, 1] = np.einsum("nyxc,yxcf->nf", x[:, 0::2, 1:4], w)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        finally:
            cpu.set_simd(previous)


def test_pool_binding_refuses_huge_geometry_with_value_error():
    x = np.ones((1, 3, 3, 2), np.float32)
    with pytest.raises(ValueError):
        cpu.maxpool2d_forward(x, (2, 2**40), (1, 1), (0, 0, 0, 1))
    with pytest.raises(ValueError):
        cpu.avgpool2d_forward(x, (2, 2), (2**64, 1), (0, 0, 0, 0))


# ---------------------------------------------------------------- 3. softmax over 0 columns

def test_dense_softmax_with_zero_outputs_is_refused_at_the_binding():
    x = np.ones((4, 3), np.float32)
    w = np.ones((3, 0), np.float32)
    with pytest.raises(ValueError, match="at least one output unit"):
        cpu.dense_forward(x, w, None, "softmax")


# ---------------------------------------------------------------- 4. gather_rows on objects

@pytest.mark.parametrize("dtype", [object, "U3", "S3", "M8[s]",
                                   np.dtype([("a", np.float32), ("b", object)])])
def test_gather_rows_refuses_non_numeric_dtypes(dtype):
    x = np.empty((3, 2), dtype=dtype)
    out = np.empty((2, 2), dtype=dtype)
    with pytest.raises(TypeError, match="numeric dtype"):
        cpu.gather_rows(x, np.array([0, 2]), out)
    with pytest.raises(TypeError, match="numeric dtype"):
        cpu.gather_rows(x, np.array([0, 2]))


def test_gather_rows_still_copies_numbers():
    x = np.arange(12, dtype=np.int16).reshape(4, 3)
    np.testing.assert_array_equal(cpu.gather_rows(x, np.array([3, 0, 3])), x[[3, 0, 3]])
    with pytest.raises(TypeError, match="numpy array"):
        cpu.gather_rows([[1, 2]], np.array([0]))


# ---------------------------------------------------------------- 10. silent non-finite state

def test_batchnorm_refuses_a_variance_that_overflows_float32():
    rng = np.random.default_rng(0)
    model = rp.Sequential([rp.layers.BatchNormalization(momentum=0.5)], input_shape=(3,),
                          seed=0)
    x = (rng.standard_normal((8, 3)) * 3e20).astype(np.float32)   # finite in float32
    assert np.isfinite(x).all()
    layer = model.layers[0]
    before = layer.state["moving_variance"].copy()
    with pytest.raises(ValueError, match="variance .*overflows float32"):
        layer.forward(x, training=True)
    # nothing entered the moving statistics
    np.testing.assert_array_equal(layer.state["moving_variance"], before)
    # float64 holds that variance: accepted, and the output is not constant
    model64 = rp.Sequential([rp.layers.BatchNormalization()], input_shape=(3,), seed=0,
                            dtype="float64")
    y = model64.layers[0].forward(x.astype(np.float64), training=True)
    assert np.isfinite(y).all() and np.ptp(y, axis=0).min() > 1.0


def test_batchnorm_stats_kernel_reports_the_overflow():
    x = np.array([[-3e20], [3e20]], np.float32)
    with pytest.raises(ValueError, match="overflows float32"):
        cpu.batchnorm_stats(x)
    mean, var = cpu.batchnorm_stats(x.astype(np.float64))
    assert np.isfinite(var).all()
    # a NaN input is not an overflow: it propagates, for the loss check to see
    mean, var = cpu.batchnorm_stats(np.array([[np.nan], [1.0]], np.float32))
    assert np.isnan(var).all()


ACTIVATION_LAYERS = {
    "dense_elu": (lambda: rp.layers.Dense(3, activation=rp.activations.ELU(1e300)), (4,)),
    "dense_leaky": (lambda: rp.layers.Dense(3, activation=rp.activations.LeakyReLU(1e300)), (4,)),
    "dense_sigmoid": (lambda: rp.layers.Dense(3, activation=rp.activations.Sigmoid(1e300)), (4,)),
    "dense_tiny_slope": (lambda: rp.layers.Dense(3, activation=rp.activations.Sigmoid(1e-300)),
                         (4,)),
    "activation_elu": (lambda: rp.layers.Activation("elu", alpha=1e300), (4,)),
    "activation_sigmoid": (lambda: rp.layers.Activation("sigmoid", slope=1e300), (4,)),
    "elu_layer": (lambda: rp.layers.ELU(1e300), (4,)),
    "leaky_layer": (lambda: rp.layers.LeakyReLU(1e300), (4,)),
    "conv_elu": (lambda: rp.layers.Conv2D(2, 1, activation=rp.activations.ELU(1e300)), (2, 2, 3)),
}


@pytest.mark.parametrize("case", sorted(ACTIVATION_LAYERS))
def test_float32_model_refuses_activation_parameters_that_only_fit_float64(case):
    make, shape = ACTIVATION_LAYERS[case]
    with pytest.raises(ValueError, match="does not fit float32|rounds to 0 in float32"):
        rp.Sequential([make()], input_shape=shape, seed=0)
    # the same layer in float64 builds and gives finite outputs on moderate inputs
    model = rp.Sequential([make()], input_shape=shape, seed=0, dtype="float64")
    y = model.predict(np.full((2,) + shape, 0.5))
    assert np.isfinite(y).all()


def test_kernels_refuse_float32_activation_parameters_out_of_range():
    x = np.ones((2, 3), np.float32)
    w = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="does not fit float32"):
        cpu.dense_forward(x, w, None, "elu", param=1e300)
    with pytest.raises(ValueError, match="does not fit float32"):
        cpu.activation_forward("leaky_relu", x, param=1e39)
    with pytest.raises(ValueError, match="does not fit float32"):
        cpu.activation_backward("sigmoid", x, x, param=1e-300)
    # in float64 the same values are fine
    y = cpu.activation_forward("elu", -x.astype(np.float64), param=1e300)
    assert np.isfinite(y).all()


# ---------------------------------------------------------------- 11. smaller ones

@pytest.mark.parametrize("loss", ["mse", "mae", "binary_crossentropy",
                                  "categorical_crossentropy", "hinge"])
@pytest.mark.parametrize("shape", [(0, 3), (0,), (4, 0)])
def test_losses_refuse_empty_predictions(loss, shape):
    fn = rp.losses.get(loss)
    y = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match="y_pred is empty"):
        fn(y, y)
    with pytest.raises(ValueError, match="y_pred is empty"):
        fn.gradient(y, y)


@pytest.mark.parametrize("n", [2**31, 2**63, 10**30, 0, -1, 513])
def test_set_num_threads_out_of_range_is_a_value_error(n):
    before = rp.get_num_threads()
    with pytest.raises(ValueError, match="set_num_threads"):
        rp.set_num_threads(n)
    assert rp.get_num_threads() == before


@pytest.mark.parametrize("optimizer", [rp.optim.SGD(lr=0.1, momentum=0.9), rp.optim.Adam(lr=0.1),
                                       rp.optim.RMSprop(lr=0.1), rp.optim.Adagrad(lr=0.1)])
def test_optimizer_given_a_list_as_parameter_names_it(optimizer):
    with pytest.raises(TypeError, match="param of 'dense/W' must be a numpy.ndarray, got list"):
        optimizer.step([("dense/W", [1.0, 2.0], np.zeros(2))])
    with pytest.raises(TypeError, match="grad of 'dense/W' must be a numpy.ndarray, got list"):
        optimizer.step([("dense/W", np.zeros(2), [1.0, 2.0])])
    with pytest.raises(TypeError, match="triples"):
        optimizer.step([("dense/W", np.zeros(2))])
