"""The vanishing-gradient experiment, complete (Glorot & Bengio 2010, figures 6-7).

    python examples/vanishing_gradients.py [--out DIR] [--quick]

Ten tanh layers of 500 units on a batch of 256 standard-normal inputs (784
features, 10 random classes, softmax + cross-entropy), at initialisation:

* N(0, 0.01^2) weights: each layer multiplies the signal by ~0.01 * sqrt(500)
  = 0.22, so the activations collapse toward 0 layer after layer, and so do
  the back-propagated gradients going down;
* N(0, 1) weights: the pre-activations have std ~ sqrt(500) = 22, every
  tanh unit saturates at +-1 and tanh' ~ 0;
* Glorot uniform: activations and back-propagated gradients keep their
  spread through all ten layers;
* sigmoid with Glorot: not zero-centred, its derivative <= 1/4, so the
  gradient shrinks by ~4x per layer going down; ReLU with He normal keeps
  the variance.

For each configuration ``GradientMonitor`` records per layer the histogram
of the activations h and of the back-propagated gradients dL/dh (the
gradient of the loss with respect to each layer's output), and the
standard deviations; the histograms are drawn as in the paper's figures 6
and 7 (DIR/vanishing_histograms.png). Last, sigmoid vs ReLU in training: the
same ten-layer MLP on a Fashion-MNIST subset.

``--quick``: 100 units, a batch of 64, a smaller training subset, no figure.
"""
import argparse
import os

import numpy as np

import retroprop as rp
from retroprop.callbacks import GradientMonitor
from retroprop.layers import Dense


def normal(std):
    def init(shape, rng, dtype="float32"):
        return (rng.standard_normal(shape) * std).astype(dtype)
    init.__name__ = f"normal_{std:g}"
    return init


CONFIGS = [
    ("tanh, N(0, 0.01)", "tanh", normal(0.01)),
    ("tanh, N(0, 1)", "tanh", normal(1.0)),
    ("tanh, Glorot", "tanh", "glorot_uniform"),
    ("sigmoid, Glorot", "sigmoid", "glorot_uniform"),
    ("ReLU, He", "relu", "he_normal"),
]


def mlp(activation, init, layers, units, inputs=784, seed=0):
    hidden = [Dense(units, activation=activation, kernel_initializer=init)
              for _ in range(layers)]
    return rp.Sequential(hidden + [Dense(10, activation="softmax")], input_shape=(inputs,),
                         seed=seed)


def plot(records, layers, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(records), 2, figsize=(12, 2.6 * len(records)))
    for row, (title, stats) in zip(axes, records.items()):
        for ax, key, what in ((row[0], "act_hist", "activation values h"),
                              (row[1], "out_grad_hist", "back-propagated gradients dL/dh")):
            for i, s in enumerate(stats[:layers]):
                counts = np.asarray(s[key]["counts"], dtype=float)
                edges = np.asarray(s[key]["edges"])
                ax.plot((edges[:-1] + edges[1:]) / 2, counts / counts.sum(),
                        color=matplotlib.colormaps["viridis"](i / max(layers - 1, 1)),
                        label=f"layer {i + 1}" if i in (0, layers - 1) else None)
            ax.set_title(f"{title}: {what}", fontsize="small")
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".", help="directory for vanishing_histograms.png")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    layers = 10
    units, batch = (100, 64) if args.quick else (500, 256)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    records = {}
    for title, activation, init in CONFIGS:
        monitor = GradientMonitor(x, y, bins=40)
        records[title] = monitor.record(mlp(activation, init, layers, units),
                                        "categorical_crossentropy")
    results = {"records": records}
    for key, label in (("act_std", "activation std"), ("out_grad_std", "dL/dh std"),
                       ("grad_std", "dL/dW std")):
        print(f"\nper-layer {label} at initialisation ({layers} layers of {units} units; "
              f"layer 1 = next to the input)")
        print(f"{'layer':>5}" + "".join(f"{t:>18}" for t in records))
        for i in range(layers):
            print(f"{i + 1:>5}" + "".join(f"{records[t][i][key]:>18.3e}" for t in records))
    # Saturation: fraction of tanh units within 0.01 of +-1 in the last hidden layer.
    print()
    for title, stats in records.items():
        hist = stats[layers - 1]["act_hist"]
        counts, edges = np.asarray(hist["counts"]), np.asarray(hist["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        if title.startswith("tanh"):
            saturated = counts[np.abs(centres) > 0.95].sum() / counts.sum()
            results[f"saturated {title}"] = float(saturated)
            print(f"{title:<18} layer {layers}: {saturated:6.1%} of the units within ~0.05 of "
                  f"+-1, activation std {stats[layers - 1]['act_std']:.2e}")

    print("\nsigmoid vs ReLU in training: the same 10-layer MLP on Fashion-MNIST")
    try:
        (xt, yt), (xv, yv) = rp.datasets.load_fashion_mnist(download=False)
    except (OSError, ValueError) as exc:
        print(f"   (Fashion-MNIST not found: {exc}; skipped)")
    else:
        n, epochs = (3000, 2) if args.quick else (20000, 3)
        xt = xt[:n].reshape(n, -1)
        xv = xv[:2000].reshape(2000, -1)
        for title, activation, init in (("sigmoid, Glorot", "sigmoid", "glorot_uniform"),
                                        ("ReLU, He", "relu", "he_normal")):
            model = mlp(activation, init, layers, 100)
            trainer = rp.Trainer(model, "categorical_crossentropy",
                                 rp.optim.SGD(lr=0.01, momentum=0.9))
            history = trainer.fit(xt, yt[:n], epochs=epochs, batch_size=64, verbose=0)
            acc = trainer.evaluate(xv, yv[:2000])["accuracy"]
            results[f"train {title}"] = acc
            print(f"   {title:<16} train loss {history.history['loss'][0]:.3f} -> "
                  f"{history.history['loss'][-1]:.3f}, test accuracy {acc:.3f} "
                  f"after {epochs} epochs on {n} images")
    if not args.quick:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("\n(matplotlib is not installed: no figure written)")
        else:
            os.makedirs(args.out, exist_ok=True)
            results["png"] = os.path.join(args.out, "vanishing_histograms.png")
            plot(records, layers, results["png"])
            print(f"\nwrote {results['png']}")
    return results


if __name__ == "__main__":
    main()
