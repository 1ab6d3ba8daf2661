"""UpSampling2D: nearest and bilinear against NumPy and PyTorch, gradients, errors, config."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import Dense, Flatten, UpSampling2D
from retroprop.layers.upsampling import bilinear_matrix


def built(layer, shape, dtype="float64"):
    layer.build(shape, dtype, np.random.default_rng(0))
    return layer


SHAPES = [((1, 1, 1), (1, 1)), ((3, 4, 2), (2, 2)), ((2, 5, 3), (3, 1)), ((7, 2, 1), (1, 4)),
          ((4, 4, 17), (2, 3))]


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape,size", SHAPES)
def test_gradients(interpolation, shape, size):
    assert check_layer_gradients(UpSampling2D(size, interpolation), shape, batch_size=2) < 1e-6


@pytest.mark.parametrize("shape,size", SHAPES)
def test_nearest_is_np_repeat(shape, size):
    x = np.random.default_rng(1).standard_normal((3,) + shape)
    y = built(UpSampling2D(size), shape).forward(x)
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, size[0], axis=1), size[1], axis=2))


def test_bilinear_by_hand():
    # One row [0, 4] doubled: samples at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    x = np.array([0.0, 4.0]).reshape(1, 1, 2, 1)
    y = built(UpSampling2D((1, 2), "bilinear"), (1, 2, 1)).forward(x)
    np.testing.assert_allclose(y.ravel(), [0.0, 1.0, 3.0, 4.0])
    a = bilinear_matrix(3, 2, np.float64)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)        # a convex combination per row


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape,size", SHAPES)
def test_against_torch(dtype, interpolation, shape, size):
    torch = pytest.importorskip("torch")
    layer = built(UpSampling2D(size, interpolation), shape, dtype)
    x = np.random.default_rng(2).standard_normal((2,) + shape).astype(dtype)
    y = layer.forward(x)
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    kwargs = {} if interpolation == "nearest" else {"align_corners": False}
    ty = torch.nn.functional.interpolate(tx, scale_factor=size, mode=interpolation, **kwargs)
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), **tol)
    assert y.dtype == dtype and dx.dtype == dtype


def test_errors_config_summary():
    with pytest.raises(ValueError, match="size must be >= 1"):
        UpSampling2D(0)
    with pytest.raises(ValueError, match="size must be an int or a tuple of 2 ints"):
        UpSampling2D((2, 2, 2))
    with pytest.raises(ValueError, match="interpolation must be one of nearest, bilinear"):
        UpSampling2D(2, "bicubic")
    with pytest.raises(ValueError, match=r"expects \(N, H, W, C\) images"):
        built(UpSampling2D(2), (4, 4))
    layer = UpSampling2D((2, 3), "bilinear", name="up")
    assert UpSampling2D.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(RuntimeError, match="backward called before forward"):
        built(UpSampling2D(2), (2, 2, 1)).backward(np.zeros((1, 4, 4, 1)))
    model = rp.Sequential([layer, Flatten(), Dense(2)], input_shape=(3, 2, 1), seed=0)
    assert "up (UpSampling2D)" in model.summary(print_fn=None)
    assert model.layers[0].output_shape == (6, 6, 1)
    x = np.random.default_rng(4).standard_normal((4, 3, 2, 1))
    m64 = rp.Sequential([UpSampling2D(2, "bilinear"), Flatten(), Dense(3, activation="softmax")],
                        input_shape=(3, 2, 1), dtype="float64", seed=0)
    assert rp.gradcheck(m64, x, [0, 1, 2, 0]) < 1e-6
