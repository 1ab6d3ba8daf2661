"""copy.deepcopy and pickle of models, layers and optimizers.

A copy must compute what the original computes, share no array with it
(training one leaves the other as it was), and carry no compiled plan
that points into the original's arrays."""
import copy
import pickle

import numpy as np
import pytest

import retroprop as rp
from retroprop.layers import (Activation, AvgPool1D, AvgPool2D, BatchNormalization, Conv1D,
                              Conv2D, Dense, Dropout, ELU, Flatten, GlobalAvgPool2D, LeakyReLU,
                              MaxPool1D, MaxPool2D, PReLU, RandomCrop, RandomFlip,
                              RandomTranslation, Residual, RReLU)


def image_model():
    return rp.Sequential([RandomFlip("horizontal", seed=0), RandomTranslation(0.1, 0.1, seed=1),
                          RandomCrop(6, 6, seed=2),
                          Conv2D(4, 3, padding="same", activation="relu"), BatchNormalization(),
                          MaxPool2D(2), Conv2D(4, 3, padding="same"), PReLU(), AvgPool2D(1),
                          GlobalAvgPool2D(), Dense(3, activation="softmax")],
                         input_shape=(8, 8, 2), seed=0)


def sequence_model():
    return rp.Sequential([Conv1D(3, 3, activation="tanh"), MaxPool1D(2), AvgPool1D(1), Flatten(),
                          Dense(6), LeakyReLU(0.1), Dropout(0.3, seed=0), Dense(6), ELU(0.5),
                          RReLU(seed=0), Residual([Dense(6, activation="sigmoid"), Dense(6)],
                                                  shortcut=Dense(6), activation="relu"),
                          Activation("swish"), Dense(3, activation="softmax")],
                         input_shape=(9, 2), seed=0)


def dense_model():
    # Dense + softmax only: training and inference run as one-call step programs.
    return rp.Sequential([Dense(16, activation="relu"), Dense(3, activation="softmax")],
                         input_shape=(5,), seed=0)


MODELS = {"image": (image_model, (8, 8, 2)), "sequence": (sequence_model, (9, 2)),
          "dense": (dense_model, (5,))}


def data(shape, n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, 3, n)


def trained(name, steps=3):
    make, shape = MODELS[name]
    model = make()
    x, y = data(shape)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=0.01), metrics=[])
    trainer.fit(x, y, epochs=steps, batch_size=8, verbose=0, seed=0)
    model.forward(x)   # makes the inference plan (a C program)
    return model, trainer, x, y


def all_arrays(model):
    return [a for layer in model.layers for group in (layer.params, layer.state)
            for a in group.values()]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_copy_computes_what_the_original_computes(name, how):
    model, _, x, _ = trained(name)
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert clone.backend is model.backend
    assert [layer.backend for layer in clone.layers] == [layer.backend for layer in model.layers]
    np.testing.assert_array_equal(clone.forward(x), model.forward(x))
    for mine, theirs in zip(all_arrays(model), all_arrays(clone)):
        np.testing.assert_array_equal(mine, theirs)
        assert not np.shares_memory(mine, theirs)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_a_copy_leaves_the_original_alone(name):
    model, trainer, x, y = trained(name)
    before = [a.copy() for a in all_arrays(model)]
    predictions = model.forward(x).copy()
    clone = copy.deepcopy(model)
    rp.Trainer(clone, "categorical_crossentropy", rp.optim.SGD(lr=0.5, momentum=0.9),
               metrics=[]).fit(x, y, epochs=2, batch_size=8, verbose=0, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(before, all_arrays(clone)))
    for old, now in zip(before, all_arrays(model)):
        np.testing.assert_array_equal(old, now)
    np.testing.assert_array_equal(model.forward(x), predictions)
    # and the original still trains through its own (cached) plans
    trainer.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, all_arrays(model)))


def test_the_plans_are_not_copied():
    """A model's plans (plan.py) point into its own arrays: a copy starts
    without them and makes its own, from its own weights."""
    model, _, x, _ = trained("dense")
    model.forward(x)
    assert model._plans, "the model should have a plan after a forward"
    clone = copy.deepcopy(model)
    assert clone._plans == {} and clone._last_plan is None
    clone.layers[0].params["W"][...] = 0.0   # the copy's plan must read the copy's weights
    expected = copy.deepcopy(clone)
    np.testing.assert_array_equal(clone.forward(x), expected.forward(x))
    assert not np.array_equal(clone.forward(x), model.forward(x))


@pytest.mark.parametrize("make_optimizer", [
    lambda: rp.optim.SGD(lr=0.1, momentum=0.9, nesterov=True), lambda: rp.optim.Adam(lr=0.01),
    lambda: rp.optim.AdamW(lr=0.01), lambda: rp.optim.RMSprop(lr=0.01, momentum=0.5),
    lambda: rp.optim.Adagrad(lr=0.1)])
def test_a_copied_model_and_optimizer_continue_training_identically(make_optimizer):
    """Copying model and optimizer together (one deepcopy keeps them paired)
    and training both copies on the same batches gives identical weights."""
    model = dense_model()
    optimizer = make_optimizer()
    x, y = data((5,))
    rp.Trainer(model, "categorical_crossentropy", optimizer, metrics=[]).fit(
        x, y, epochs=2, batch_size=8, verbose=0, seed=0)
    model2, optimizer2 = copy.deepcopy((model, optimizer))
    assert optimizer2.iterations == optimizer.iterations
    for m, opt in ((model, optimizer), (model2, optimizer2)):
        rp.Trainer(m, "categorical_crossentropy", opt, metrics=[]).fit(
            x, y, epochs=2, batch_size=8, verbose=0, seed=3)
    for a, b in zip(all_arrays(model), all_arrays(model2)):
        np.testing.assert_array_equal(a, b)


def test_a_layer_alone_copies():
    layer = Dense(4, activation="tanh")
    layer.build((3,), "float64", np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3))
    clone = pickle.loads(pickle.dumps(layer))
    assert clone.backend is layer.backend
    np.testing.assert_array_equal(clone.forward(x), layer.forward(x))


def test_the_numpy_backend_is_kept_by_name():
    model = rp.Sequential([Dense(3, activation="softmax")], input_shape=(2,), seed=0,
                          backend="numpy")
    clone = pickle.loads(pickle.dumps(model))
    assert clone.backend is rp.backend.get_backend("numpy")
    assert clone.layers[0].backend is rp.backend.get_backend("numpy")


def test_a_backend_module_given_directly_is_kept():
    """A model given the backend module itself (not its name) copies too."""
    from retroprop.backend import numpy_ref
    model = rp.Sequential([Dense(3, activation="softmax")], input_shape=(2,), seed=0,
                          backend=numpy_ref)
    clone = copy.deepcopy(model)
    assert clone.backend is numpy_ref and clone.layers[0].backend is numpy_ref


def test_something_else_in_place_of_a_backend_is_named_in_the_error():
    model = dense_model()
    model.backend = np
    with pytest.raises(ValueError, match="is not a retroprop backend"):
        copy.deepcopy(model)
