"""BatchNormalization: kernels against the NumPy reference, the layer against a
formula written here and against PyTorch, finite differences in training and
inference mode, awkward shapes, and the non-trainable moving statistics
(summary, optimizers, save/load)."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.backend import cpu as cpu_backend
from retroprop.backend import numpy_ref
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import BatchNormalization, Dense, Flatten

SHAPES = [(1, 1), (1, 7), (2, 3), (97, 13), (5, 3, 3, 17), (4, 11, 5), (9000, 3)]


def reference(x, gamma, beta, eps, mean=None, var=None):
    """Per-channel (last axis) batch norm, with batch statistics unless given."""
    axes = tuple(range(x.ndim - 1))
    x = x.astype(np.float64)
    if mean is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


# ---------------------------------------------------------------- kernels

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_match_numpy_reference(shape, dtype, rng):
    c = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)  # a large mean: two-pass variance
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    mean, var = cpu_backend.batchnorm_stats(x)
    ref_mean, ref_var = numpy_ref.batchnorm_stats(x)
    np.testing.assert_allclose(mean, ref_mean, **tolerance(dtype))
    np.testing.assert_allclose(var, ref_var, **tolerance(dtype))
    for g, b in [(gamma, beta), (None, None)]:
        y = cpu_backend.batchnorm_apply(x, mean, var, g, b, epsilon=1e-3)
        np.testing.assert_allclose(y, numpy_ref.batchnorm_apply(x, mean, var, g, b, epsilon=1e-3),
                                   **tolerance(dtype))
    for training in (True, False):
        grads = {}
        for name, be in (("cpu", cpu_backend), ("ref", numpy_ref)):
            dg, db, dx = np.empty(c, dtype), np.empty(c, dtype), np.empty(shape, dtype)
            be.batchnorm_backward(x, dy, mean, var, gamma, epsilon=1e-3, training=training,
                                  dgamma=dg, dbeta=db, dx=dx)
            grads[name] = (dg, db, dx)
        for a, b in zip(grads["cpu"], grads["ref"]):
            np.testing.assert_allclose(a, b, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                       atol=1e-4 if dtype == np.float32 else 1e-10)


def test_backward_without_dx_or_gamma(rng):
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    mean, var = cpu_backend.batchnorm_stats(x)
    db = np.empty(4)
    assert cpu_backend.batchnorm_backward(x, dy, mean, var, None, epsilon=1e-3, training=True,
                                          dbeta=db) is None
    np.testing.assert_allclose(db, dy.sum(axis=0), rtol=1e-12)
    dx = cpu_backend.batchnorm_backward(x, dy, mean, var, None, epsilon=1e-3, training=True,
                                        dx=np.empty_like(x))
    ref = numpy_ref.batchnorm_backward(x, dy, mean, var, None, epsilon=1e-3, training=True,
                                       dx=np.empty_like(x))
    np.testing.assert_allclose(dx, ref, rtol=1e-10, atol=1e-12)


def test_kernels_are_deterministic_across_thread_counts(rng):
    x = rng.standard_normal((20011, 7)).astype(np.float32)  # many row blocks, a ragged last one
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma = rng.standard_normal(7).astype(np.float32)
    threads = rp.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            rp.set_num_threads(n)
            mean, var = cpu_backend.batchnorm_stats(x)
            dx = np.empty_like(x)
            dg = np.empty(7, np.float32)
            cpu_backend.batchnorm_backward(x, dy, mean, var, gamma, epsilon=1e-3, training=True,
                                           dgamma=dg, dx=dx)
            results.append((mean, var, dg, dx))
    finally:
        rp.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_kernel_input_validation(rng):
    x = rng.standard_normal((4, 3))
    mean, var = cpu_backend.batchnorm_stats(x)
    with pytest.raises(TypeError, match="x"):
        cpu_backend.batchnorm_stats(x.astype(np.int32))
    with pytest.raises(TypeError, match="mean"):
        cpu_backend.batchnorm_apply(x, mean.astype(np.float32), var, None, None, epsilon=1e-3)
    with pytest.raises(ValueError, match=r"gamma.*\(3,\)"):
        cpu_backend.batchnorm_apply(x, mean, var, np.ones(4), None, epsilon=1e-3)
    with pytest.raises(TypeError, match="mean"):
        cpu_backend.batchnorm_apply(x, None, var, None, None, epsilon=1e-3)
    with pytest.raises(ValueError, match="dy"):
        cpu_backend.batchnorm_backward(x, np.ones((4, 2)), mean, var, None, epsilon=1e-3,
                                       training=True, dx=np.empty_like(x))
    with pytest.raises(ValueError, match="non-empty"):
        cpu_backend.batchnorm_stats(np.empty((0, 3)))


def test_non_contiguous_input(rng):
    base = rng.standard_normal((8, 6, 10))
    x = base[:, ::2, ::3]        # strided view
    assert not x.flags.c_contiguous
    mean, var = cpu_backend.batchnorm_stats(x)
    ref_mean, ref_var = numpy_ref.batchnorm_stats(np.ascontiguousarray(x))
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(var, ref_var, rtol=1e-12)
    layer = BatchNormalization()
    layer.build(x.shape[1:], np.float64, np.random.default_rng(0))
    y = layer.forward(x, training=True).copy()
    np.testing.assert_allclose(y, reference(x, 1.0, 0.0, 1e-3), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- the layer

def built(layer, shape, dtype=np.float64, seed=0):
    layer.build(shape, dtype, np.random.default_rng(seed))
    return layer


@pytest.mark.parametrize("shape", [(5,), (4, 3, 2), (6, 3)])
def test_layer_train_and_inference_match_formula(shape, rng):
    layer = built(BatchNormalization(momentum=0.8, epsilon=1e-2,
                                     gamma_initializer="normal", beta_initializer="normal"),
                  shape)
    gamma, beta = layer.params["gamma"], layer.params["beta"]
    axes = tuple(range(len(shape)))
    moving_mean, moving_var = np.zeros(shape[-1]), np.ones(shape[-1])
    for step in range(3):
        x = rng.standard_normal((7,) + shape) * (step + 1) + step
        y = layer.forward(x, training=True)
        np.testing.assert_allclose(y, reference(x, gamma, beta, 1e-2), rtol=1e-10, atol=1e-12)
        moving_mean = 0.8 * moving_mean + 0.2 * x.mean(axis=axes)
        moving_var = 0.8 * moving_var + 0.2 * x.var(axis=axes)    # biased, as Keras
        np.testing.assert_allclose(layer.state["moving_mean"], moving_mean, rtol=1e-12)
        np.testing.assert_allclose(layer.state["moving_variance"], moving_var, rtol=1e-12)
    x = rng.standard_normal((3,) + shape)
    before = layer.state["moving_mean"].copy()
    y = layer.forward(x, training=False)
    np.testing.assert_allclose(y, reference(x, gamma, beta, 1e-2, moving_mean, moving_var),
                               rtol=1e-10, atol=1e-12)
    # Inference leaves the moving statistics alone.
    np.testing.assert_array_equal(layer.state["moving_mean"], before)


def test_channel_axis_other_than_last(rng):
    layer = built(BatchNormalization(axis=1, gamma_initializer="normal"), (4, 3, 2))
    x = rng.standard_normal((5, 4, 3, 2))
    y = layer.forward(x, training=True)
    moved = np.moveaxis(x, 1, -1)
    expected = np.moveaxis(reference(moved, layer.params["gamma"], 0.0, 1e-3), -1, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    assert layer.params["gamma"].shape == (4,)
    assert check_layer_gradients(BatchNormalization(axis=-3), (4, 3, 2), batch_size=3,
                                 training=True) < 1e-6


@pytest.mark.parametrize("shape,kwargs", [
    ((5,), {}), ((4, 3, 2), {}), ((6, 3), {}), ((3, 3, 4), {"center": False}),
    ((5,), {"scale": False}), ((7,), {"center": False, "scale": False}),
])
@pytest.mark.parametrize("training", [True, False])
def test_gradients(shape, kwargs, training):
    layer = BatchNormalization(momentum=0.5, gamma_initializer="normal",
                               moving_mean_initializer="normal", **kwargs)
    err = check_layer_gradients(layer, shape, batch_size=4, training=training)
    assert err < 1e-6, err


def test_gradcheck_restores_moving_statistics(rng):
    layer = built(BatchNormalization(momentum=0.5), (3,))
    before = {k: v.copy() for k, v in layer.state.items()}
    check_layer_gradients(layer, (3,), training=True)
    for key in before:
        np.testing.assert_array_equal(layer.state[key], before[key])


def test_single_value_per_channel_is_accepted_like_keras(rng):
    # N = 1 on (N, F): the batch variance is 0, the output is beta and the
    # gradients are 0 (finite), as in Keras; PyTorch would raise instead.
    layer = built(BatchNormalization(beta_initializer="normal", momentum=0.5), (4,))
    x = rng.standard_normal((1, 4))
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, layer.params["beta"][None, :], atol=1e-12)
    dx = layer.backward(rng.standard_normal((1, 4)))
    assert np.all(np.isfinite(dx)) and np.allclose(dx, 0.0)
    np.testing.assert_allclose(layer.grads["gamma"], 0.0, atol=1e-12)
    np.testing.assert_allclose(layer.state["moving_variance"], 0.5)  # 0.5 * 1 + 0.5 * 0
    # One image still has H*W values per channel: ordinary statistics.
    image = built(BatchNormalization(), (3, 3, 2))
    x = rng.standard_normal((1, 3, 3, 2))
    np.testing.assert_allclose(image.forward(x, training=True), reference(x, 1.0, 0.0, 1e-3),
                               rtol=1e-10, atol=1e-12)


def test_float32_layer(rng):
    layer = built(BatchNormalization(), (5, 5, 8), dtype=np.float32)
    x = rng.standard_normal((6, 5, 5, 8)).astype(np.float32)
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, reference(x, 1.0, 0.0, 1e-3), rtol=1e-4, atol=1e-5)
    assert layer.backward(np.ones_like(y)).dtype == np.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        BatchNormalization(epsilon=0.0)
    with pytest.raises(TypeError, match="axis"):
        BatchNormalization(axis=1.0)
    with pytest.raises(ValueError, match="batch axis"):
        built(BatchNormalization(axis=0), (3,))
    with pytest.raises(ValueError, match="axis 3"):
        built(BatchNormalization(axis=3), (4, 3))
    layer = built(BatchNormalization(), (3,))
    with pytest.raises(ValueError, match=r"BatchNormalization.*\(N, 3\)"):
        layer.forward(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="float64"):
        layer.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        BatchNormalization().backward(np.zeros((2, 3)))


def test_frozen_layer_runs_in_inference_mode(rng):
    model = rp.Sequential([Dense(4), BatchNormalization()], input_shape=(3,), seed=0)
    bn = model.layers[1]
    bn.trainable = False
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = model.forward(x, training=True)
    np.testing.assert_array_equal(y, model.predict(x))
    np.testing.assert_array_equal(bn.state["moving_mean"], 0.0)
    assert [k for k, _, _ in model.named_parameters()] == ["dense/W", "dense/b"]


# ---------------------------------------------------------------- against PyTorch

def torch_bn(torch, channels, momentum, eps, gamma, beta, two_d):
    cls = torch.nn.BatchNorm2d if two_d else torch.nn.BatchNorm1d
    bn = cls(channels, eps=eps, momentum=1.0 - momentum).double()  # torch's rate = 1 - Keras'
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
    return bn


@pytest.mark.parametrize("shape", [(6,), (5, 4, 3)])
def test_matches_torch_train_and_eval(shape, rng):
    torch = pytest.importorskip("torch")
    two_d = len(shape) == 3
    layer = built(BatchNormalization(momentum=0.9, gamma_initializer="normal",
                                     beta_initializer="normal"), shape)
    c = shape[-1]
    bn = torch_bn(torch, c, 0.9, 1e-3, layer.params["gamma"], layer.params["beta"], two_d)

    def to_torch(a):  # NHWC -> NCHW
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2) if two_d else a))

    def from_torch(t):
        a = t.detach().numpy()
        return a.transpose(0, 2, 3, 1) if two_d else a

    n, steps = 8, 3
    rows = n * (shape[0] * shape[1] if two_d else 1)
    bn.train()
    for step in range(steps):
        x = rng.standard_normal((n,) + shape) * 2 + step
        dy = rng.standard_normal((n,) + shape)
        xt = to_torch(x).requires_grad_(True)
        yt = bn(xt)
        yt.backward(to_torch(dy))
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
        np.testing.assert_allclose(y, from_torch(yt), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx, from_torch(xt.grad), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(layer.grads["gamma"], bn.weight.grad.numpy(), rtol=1e-9)
        np.testing.assert_allclose(layer.grads["beta"], bn.bias.grad.numpy(), rtol=1e-9)
        bn.weight.grad = bn.bias.grad = None
    np.testing.assert_allclose(layer.state["moving_mean"], bn.running_mean.numpy(), rtol=1e-12)
    # PyTorch feeds the unbiased batch variance (x rows/(rows-1)) into running_var, we the
    # biased one (Keras). From the same start of 1, the parts added by the batches differ
    # by exactly that factor.
    start = 0.9 ** steps
    np.testing.assert_allclose((bn.running_var.numpy() - start) * (rows - 1) / rows,
                               layer.state["moving_variance"] - start, rtol=1e-12)
    # Inference: with the same moving statistics the two agree.
    with torch.no_grad():
        bn.running_var.copy_(torch.from_numpy(layer.state["moving_variance"]))
    bn.eval()
    x = rng.standard_normal((3,) + shape)
    np.testing.assert_allclose(layer.forward(x, training=False), from_torch(bn(to_torch(x))),
                               rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- in a model

def bn_model(dtype="float32", seed=0):
    return rp.Sequential([
        rp.layers.Conv2D(4, 3, padding="same"), BatchNormalization(),
        rp.layers.Activation("relu"), Flatten(), Dense(8), BatchNormalization(momentum=0.5),
        Dense(3, activation="softmax"),
    ], input_shape=(6, 6, 2), dtype=dtype, seed=seed)


def test_summary_counts_moving_statistics_as_non_trainable():
    model = bn_model()
    text = model.summary(print_fn=None)
    # conv 3*3*2*4+4 = 76, bn 4*4 = 16, dense 144*8+8 = 1160, bn 8*4 = 32, dense 8*3+3 = 27
    assert model.count_params() == 76 + 16 + 1160 + 32 + 27
    assert "Total params: 1,311" in text
    assert "Trainable params: 1,287" in text          # moving statistics: 2*4 + 2*8 = 24
    assert "Non-trainable params: 24" in text
    assert "batch_normalization (BatchNormalization)" in text


def test_optimizers_never_touch_moving_statistics(rng):
    model = bn_model()
    keys = [k for k, _, _ in model.named_parameters()]
    assert "batch_normalization/gamma" in keys and "batch_normalization/beta" in keys
    assert not any("moving" in k for k in keys)
    x = rng.standard_normal((16, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    optimizer = rp.optim.Adam(lr=0.01, weight_decay=0.1)
    trainer = rp.Trainer(model, "categorical_crossentropy", optimizer)
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not any("moving" in k for k in optimizer.state_arrays())
    bn = model.layers[1]
    assert np.all(bn.state["moving_variance"] > 0)
    assert not np.array_equal(bn.state["moving_mean"], 0.0)   # updated by the forward passes
    # An optimizer step (with weight decay, which would shrink anything it saw)
    # changes the parameters and leaves the moving statistics exactly as they were.
    states = [a.copy() for _, _, a in model.states()]
    gamma = bn.params["gamma"].copy()
    optimizer.step(model.named_parameters())
    assert not np.array_equal(bn.params["gamma"], gamma)
    for (_, _, a), b in zip(model.states(), states):
        np.testing.assert_array_equal(a, b)


def test_save_load_round_trips_moving_statistics(tmp_path, rng):
    model = bn_model()
    x = rng.standard_normal((32, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.05)).fit(
        x, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "bn.rpz"
    model.save(str(path))
    loaded = rp.load_model(str(path))
    for (_, _, a), (_, _, b) in zip(model.states(), loaded.states()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.get_config() == model.get_config()
    assert len(model.get_weights()) == 10 + 4   # 10 trainable arrays, 4 moving statistics
    # get_weights / set_weights carry the moving statistics too (EarlyStopping relies on it).
    fresh = bn_model(seed=5)
    fresh.set_weights(model.get_weights())
    np.testing.assert_array_equal(fresh.predict(x), model.predict(x))


def test_model_gradcheck_in_training_mode(rng):
    model = bn_model(dtype="float64")
    x = rng.standard_normal((5, 6, 6, 2))
    y = rng.integers(0, 3, 5)
    assert rp.gradcheck(model, x, y, training=True, max_params_per_tensor=20) < 1e-6
    assert rp.gradcheck(model, x, y, max_params_per_tensor=20) < 1e-6
