"""Initialization: zeros never break the symmetry of an MLP (but are fine for
logistic regression); small uniform and normal initialisations compared.

    python examples/initialization.py [--quick]

1. An MLP whose weights all start at 0: every hidden unit computes the same
   function and receives the same gradient, so after any amount of training
   all hidden units are still identical (one distinct unit), and the network
   is no better than a single hidden unit.
2. Logistic regression (no hidden layer) started at zeros reaches the same
   solution as from random weights: its loss is convex, there is no symmetry
   to break.
3. The same 64-32-10 MLP on the 8x8 digits from U(-0.1, 0.1), N(0, sigma^2)
   for a few sigma, and Glorot: too small a sigma starts with vanishing
   signals and learns slowly, too large saturates the tanh units.

``--quick`` trains for fewer epochs.
"""
import argparse

import numpy as np

import retroprop as rp
from retroprop.layers import Dense


def uniform(limit):
    def init(shape, rng, dtype="float32"):
        return rng.uniform(-limit, limit, size=shape).astype(dtype)
    init.__name__ = f"uniform_{limit:g}"
    return init


def normal(std):
    def init(shape, rng, dtype="float32"):
        return (rng.standard_normal(shape) * std).astype(dtype)
    init.__name__ = f"normal_{std:g}"
    return init


def digits():
    (x, y), (xt, yt) = rp.datasets.load_digits()
    return x.reshape(len(x), -1), y, xt.reshape(len(xt), -1), yt


def distinct_columns(w, tol=1e-6):
    """Number of distinct hidden units (columns of W), up to tol."""
    cols = []
    for j in range(w.shape[1]):
        if not any(np.max(np.abs(w[:, j] - c)) <= tol for c in cols):
            cols.append(w[:, j])
    return len(cols)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    epochs = 5 if args.quick else 30
    x, y, xt, yt = digits()
    results = {}

    print("1. a 64-16-10 MLP with every weight and bias at 0")
    for init in ("zeros", "glorot_uniform"):
        model = rp.Sequential([Dense(16, activation="sigmoid", kernel_initializer=init),
                               Dense(10, activation="softmax", kernel_initializer=init)],
                              input_shape=(64,), seed=0)
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.5))
        trainer.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        hidden_units = distinct_columns(model.layers[0].params["W"])
        acc = trainer.evaluate(xt, yt)["accuracy"]
        results[f"{init} distinct"] = hidden_units
        results[f"{init} accuracy"] = acc
        print(f"   {init:<15} after {epochs} epochs: {hidden_units:>2} distinct hidden units "
              f"of 16, test accuracy {acc:.3f}")

    print("\n2. logistic regression (softmax, no hidden layer): zeros vs random start")
    for init in ("zeros", "glorot_uniform"):
        model = rp.Sequential([Dense(10, activation="softmax", kernel_initializer=init)],
                              input_shape=(64,), seed=0)
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1))
        history = trainer.fit(x, y, epochs=epochs, batch_size=32, verbose=0, seed=1)
        acc = trainer.evaluate(xt, yt)["accuracy"]
        results[f"logreg {init}"] = acc
        print(f"   {init:<15} final train loss {history.history['loss'][-1]:.4f}, "
              f"test accuracy {acc:.3f}")

    print("\n3. a 64-32-10 tanh MLP from different initialisations (biases 0)")
    inits = [("U(-0.1, 0.1)", uniform(0.1)), ("N(0, 0.001)", normal(0.001)),
             ("N(0, 0.01)", normal(0.01)), ("N(0, 0.1)", normal(0.1)),
             ("N(0, 1)", normal(1.0)), ("N(0, 10)", normal(10.0)),
             ("Glorot uniform", "glorot_uniform")]
    print(f"   {'initialisation':<16}{'loss epoch 1':>14}{'loss last':>12}{'test acc':>10}")
    for name, init in inits:
        model = rp.Sequential([Dense(32, activation="tanh", kernel_initializer=init),
                               Dense(10, activation="softmax", kernel_initializer=init)],
                              input_shape=(64,), seed=0)
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1))
        history = trainer.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        acc = trainer.evaluate(xt, yt)["accuracy"]
        results[f"init {name}"] = acc
        print(f"   {name:<16}{history.history['loss'][0]:>14.4f}"
              f"{history.history['loss'][-1]:>12.4f}{acc:>10.3f}")
    return results


if __name__ == "__main__":
    main()
