"""Keras-style logistic regression on Fashion-MNIST, as in the course, and the
shuffled-pixel experiment.

    python examples/fashion_mnist.py [--quick] [--epochs 20]

1. Logistic regression written the way the course writes it in Keras: read
   the IDX files (uint8 images (60000, 28, 28)), reshape to (60000, 784),
   divide by 255, one-hot the labels, one ``Dense(10, name='fc1')`` with a
   softmax, ``summary()`` (7,850 parameters), batch 128, 20 epochs of SGD,
   then the test accuracy.
2. An MLP (784-256-128-10) on the images and on the same images with their
   pixels shuffled by one fixed permutation: an MLP does not know which
   pixels are neighbours, so it learns both equally well (a convolutional
   network would not).

``--quick`` uses 10,000 training images and 3 epochs (the numbers are lower
than the full run's; the full run's are in docs/course/fashion_mnist.md).
The data come from /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist) or ``rp.datasets``' other look-up places.
"""
import argparse
import os

import numpy as np

import retroprop as rp
from retroprop.layers import Dense


def load_raw():
    """uint8 images and int labels, as keras.datasets.fashion_mnist.load_data() gives them."""
    directory = "/usr/share/datasets/fashion-mnist"
    if os.path.isdir(directory):
        read = rp.datasets.read_idx
        x = read(os.path.join(directory, "train-images-idx3-ubyte.gz"))
        y = read(os.path.join(directory, "train-labels-idx1-ubyte.gz"))
        xt = read(os.path.join(directory, "t10k-images-idx3-ubyte.gz"))
        yt = read(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"))
        return (x, y), (xt, yt)
    (x, y), (xt, yt) = rp.datasets.load_fashion_mnist()
    as_uint8 = lambda a: np.rint(a[..., 0] * 255).astype(np.uint8)  # noqa: E731
    return (as_uint8(x), y), (as_uint8(xt), yt)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=None, help="default 20 (3 with --quick)")
    args = p.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 20)
    results = {}

    (x_train, y_train), (x_test, y_test) = load_raw()
    if args.quick:
        x_train, y_train = x_train[:10000], y_train[:10000]
    print(f"x_train {x_train.shape} {x_train.dtype}, x_test {x_test.shape}")
    x_train = x_train.reshape(len(x_train), 784).astype("float32") / 255
    x_test = x_test.reshape(len(x_test), 784).astype("float32") / 255
    y_train = rp.datasets.to_categorical(y_train, 10)
    y_test = rp.datasets.to_categorical(y_test, 10)

    print("\n1. logistic regression")
    model = rp.Sequential([Dense(10, activation="softmax", name="fc1")], input_shape=(784,),
                          seed=0)
    model.summary()
    results["params"] = model.count_params()
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.1),
                         metrics=["accuracy"])
    history = trainer.fit(x_train, y_train, batch_size=128, epochs=epochs, verbose=2)
    score = trainer.evaluate(x_test, y_test)
    results["logreg_test_accuracy"] = score["accuracy"]
    results["logreg_history"] = history.history
    print(f"Test loss: {score['loss']:.4f}  Test accuracy: {score['accuracy']:.4f}")

    print("\n2. an MLP on the images and on the pixel-shuffled images")
    perm = np.random.default_rng(0).permutation(784)
    mlp_epochs = epochs if args.quick else 10
    for name, xtr, xte in (("original pixels", x_train, x_test),
                           ("shuffled pixels", x_train[:, perm], x_test[:, perm])):
        mlp = rp.Sequential([Dense(256, activation="relu"), Dense(128, activation="relu"),
                             Dense(10, activation="softmax")], input_shape=(784,), seed=0)
        t = rp.Trainer(mlp, "categorical_crossentropy", rp.optim.SGD(lr=0.05, momentum=0.9))
        t.fit(np.ascontiguousarray(xtr), y_train, batch_size=128, epochs=mlp_epochs, verbose=0)
        acc = t.evaluate(np.ascontiguousarray(xte), y_test)["accuracy"]
        results[f"mlp {name}"] = acc
        print(f"   {name:<16} test accuracy {acc:.4f} after {mlp_epochs} epochs")
    return results


if __name__ == "__main__":
    main()
