"""Residual blocks: forward against the sum computed by hand, finite differences
with identity and projection shortcuts, nested parameters seen by optimizers,
summary and save/load, shape errors, and a small residual CNN that learns digits."""
import numpy as np
import pytest

import retroprop as rp
from retroprop.gradcheck import check_layer_gradients
from retroprop.layers import (Activation, BatchNormalization, Conv2D, Dense,
                              GlobalAvgPool2D, Residual)


def build(layer, shape, dtype=np.float64, seed=0):
    layer.build(shape, dtype, np.random.default_rng(seed))
    return layer


def test_forward_is_inner_plus_shortcut(rng):
    block = build(Residual([Dense(5, activation="tanh"), Dense(4)], activation="relu"), (4,))
    x = rng.standard_normal((3, 4))
    d1, d2 = block.inner
    h = np.tanh(x @ d1.params["W"] + d1.params["b"]) @ d2.params["W"] + d2.params["b"]
    np.testing.assert_allclose(block.forward(x), np.maximum(h + x, 0.0), rtol=1e-12)

    proj = build(Residual([Dense(6)], shortcut=Dense(6, use_bias=False)), (4,))
    inner, short = proj.inner[0], proj.shortcut
    expected = x @ inner.params["W"] + inner.params["b"] + x @ short.params["W"]
    np.testing.assert_allclose(proj.forward(x), expected, rtol=1e-12)


@pytest.mark.parametrize("make,shape", [
    (lambda: Residual([Dense(5, activation="tanh"), Dense(4)]), (4,)),
    (lambda: Residual([Dense(5, activation="sigmoid")], shortcut=Dense(5), activation="tanh"),
     (3,)),
    (lambda: Residual([Conv2D(3, 3, padding="same", activation="tanh"),
                       Conv2D(3, 3, padding="same")], activation="tanh"), (5, 5, 3)),
    (lambda: Residual([Conv2D(4, 3, strides=2, padding="same", activation="tanh"),
                       Conv2D(4, 3, padding="same")],
                      shortcut=Conv2D(4, 1, strides=2)), (5, 5, 2)),
])
def test_gradients_identity_and_projection(make, shape):
    err, details = check_layer_gradients(make(), shape, batch_size=3, return_details=True)
    assert err < 1e-6, details
    # Every nested parameter took part in the check.
    assert any("/" in key for key in details)


def test_gradients_with_batch_normalization_inside_in_training_mode():
    block = Residual([Conv2D(3, 3, padding="same"), BatchNormalization(),
                      Activation("tanh"), Conv2D(3, 3, padding="same")], activation="tanh")
    assert check_layer_gradients(block, (4, 4, 3), batch_size=3, training=True) < 1e-6


def test_model_gradcheck_and_first_layer_without_input_gradient(rng):
    model = rp.Sequential([
        Residual([Dense(6, activation="tanh"), Dense(5)], shortcut=Dense(5)),
        Residual([Dense(5, activation="tanh")], activation="tanh"),
        Dense(3, activation="softmax")], input_shape=(4,), dtype="float64", seed=0)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    assert rp.gradcheck(model, x, y) < 1e-6
    # Training calls backward without the input gradient (need_dx=False) on the first block.
    before = model.layers[0].params["dense/W"].copy()
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1)).fit(
        x, y, epochs=1, batch_size=6, verbose=0)
    assert not np.array_equal(before, model.layers[0].params["dense/W"])


def test_identity_shape_mismatch_suggests_a_projection():
    with pytest.raises(ValueError, match=r"\(N, 8\).*identity.*shortcut=Dense\(8\)"):
        build(Residual([Dense(8)]), (4,))
    with pytest.raises(ValueError, match=r"shortcut=Conv2D\(16, 1"):
        build(Residual([Conv2D(16, 3, padding="same")]), (6, 6, 3))
    with pytest.raises(ValueError, match=r"shortcut .*\(N, 3, 3, 8\).*\(N, 6, 6, 8\)"):
        build(Residual([Conv2D(8, 3, padding="same")], shortcut=Conv2D(8, 1, strides=2)),
              (6, 6, 3))
    # In a model the error surfaces at build, and the model is left unbuilt.
    with pytest.raises(ValueError, match="projection"):
        rp.Sequential([Residual([Dense(8)])], input_shape=(4,))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="at least one"):
        Residual([])
    with pytest.raises(TypeError, match="Layer"):
        Residual([Dense(3), "relu"])
    with pytest.raises(TypeError, match="Layer"):
        Residual([Dense(3)], shortcut="dense")
    d = Dense(3)
    with pytest.raises(ValueError, match="twice"):
        Residual([d, d])
    with pytest.raises(ValueError, match="duplicate"):
        Residual([Dense(3, name="a"), Dense(3, name="a")])
    with pytest.raises(ValueError):
        Residual([Dense(3)], activation="no_such_activation")


def resnet_model(dtype="float32", seed=0):
    """A small ResNet for 8x8 digits: a stem, an identity block, a projection block."""
    def block(filters, strides=1, project=False):
        return Residual([
            Conv2D(filters, 3, strides=strides, padding="same"),
            BatchNormalization(momentum=0.9), Activation("relu"),
            Conv2D(filters, 3, padding="same"), BatchNormalization(momentum=0.9),
        ], shortcut=Conv2D(filters, 1, strides=strides) if project else None,
            activation="relu")
    return rp.Sequential([
        Conv2D(8, 3, padding="same"), BatchNormalization(momentum=0.9), Activation("relu"),
        block(8), block(16, strides=2, project=True),
        GlobalAvgPool2D(), Dense(10, activation="softmax"),
    ], input_shape=(8, 8, 1), dtype=dtype, seed=seed)


def test_summary_shows_nested_layers_and_counts():
    model = resnet_model()
    text = model.summary(print_fn=None)
    block = model.layers[4]
    assert [c.name for c in block.sublayers()] == [
        "conv2d", "batch_normalization", "activation", "conv2d_1", "batch_normalization_1",
        "shortcut"]
    # conv 3*3*8*16+16 = 1168, bn 64, conv 3*3*16*16+16 = 2320, bn 64, shortcut 8*16+16 = 144
    assert block.count_params() == 1168 + 64 + 2320 + 64 + 144
    assert block.count_trainable_params() == block.count_params() - 2 * 32
    assert "residual_1 (Residual)" in text and "  shortcut (Conv2D)" in text
    assert f"{block.count_params():,}" in text
    total = model.count_params()
    non_trainable = 2 * 8 + 4 * 8 + 4 * 16        # moving statistics of the 5 BN layers
    assert f"Total params: {total:,}" in text
    assert f"Non-trainable params: {non_trainable:,}" in text
    assert f"Trainable params: {total - non_trainable:,}" in text


def test_optimizer_sees_nested_parameters_and_trainable_flags():
    model = resnet_model()
    keys = [k for k, _, _ in model.named_parameters()]
    assert "residual_1/shortcut/W" in keys and "residual/conv2d_1/W" in keys
    assert "residual/batch_normalization/gamma" in keys
    assert not any("moving" in k for k in keys)
    # The block's arrays are its children's, not copies.
    block = model.layers[4]
    assert block.params["shortcut/W"] is block.shortcut.params["W"]
    block.shortcut.trainable = False
    keys = [k for k, _, _ in model.named_parameters()]
    assert "residual_1/shortcut/W" not in keys and "residual_1/conv2d/W" in keys
    block.trainable = False
    assert not any(k.startswith("residual_1/") for k, _, _ in model.named_parameters())


def test_save_load_round_trip(tmp_path, rng):
    model = resnet_model()
    x = rng.random((40, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.05)).fit(
        x, y, epochs=1, batch_size=10, verbose=0)
    path = tmp_path / "resnet.rpz"
    model.save(str(path))
    loaded = rp.load_model(str(path))
    config = loaded.get_config()
    assert config == model.get_config()
    block_config = config["layers"][4]["config"]
    assert block_config["shortcut"]["class_name"] == "Conv2D"
    assert [c["class_name"] for c in block_config["layers"]][:2] == ["Conv2D",
                                                                      "BatchNormalization"]
    assert block_config["activation"] == "relu"
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_residual_cnn_learns_digits():
    # 1438 training images, 3 epochs, Adam lr 0.003, batch 32; test accuracy measured
    # (inference mode, moving statistics) for seeds 0, 1, 2: 0.955, 0.942, 0.969.
    # The same models with batch statistics at test time score 0.98, 0.97, 0.97: the
    # moving averages (momentum 0.9) still lag the last weights after 135 steps.
    pytest.importorskip("sklearn")
    (x, y), (x_test, y_test) = rp.datasets.load_digits()
    model = resnet_model(seed=0)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=0.003),
                         metrics=["accuracy"])
    history = trainer.fit(x, y, epochs=3, batch_size=32, verbose=0, seed=0)
    result = trainer.evaluate(x_test, y_test)
    print("residual CNN on digits:", history.history["loss"], result)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert result["accuracy"] > 0.9
