"""Vanishing gradients in a deep MLP: how initialisation and activation change them.

    python benchmarks/vanishing_gradients.py [--layers 10] [--units 500] [--batch 256]
                                             [--png vanishing_gradients.png] [--markdown]

Builds four 10-layer, 500-unit MLPs on the same random data (784 inputs,
10 classes, softmax + cross-entropy) and prints, per hidden layer, the
standard deviation of its activations and of the loss gradient w.r.t. its
kernel, recorded by ``callbacks.GradientMonitor`` from one forward/backward
pass at initialisation (no training). ``--png`` writes both curves per
configuration (log scale) when matplotlib is installed; ``--markdown``
prints the tables as Markdown.

* tanh, weights ~ N(0, 1): saturated units (activation std ~ 1); the kernel
  gradient changes scale by a large factor per layer (with 500 inputs the
  huge weights outweigh the small tanh' and it *grows* toward the input),
  so the layers learn at wildly different rates
* tanh, Glorot uniform: activations and gradients keep their scale
* sigmoid, Glorot uniform: gradients shrink layer after layer (sigmoid' <= 1/4)
* ReLU, He normal: the He scaling keeps the variance through ReLUs

The networks compute in float64 (``--dtype``). In float32 the saturated tanh
units of the N(0, 1) network output values within an ulp or two of +-1, and
their derivative 1 - y**2 is then mostly rounding: that column's gradients
moved by 7% between the AVX2 and the portable kernels (and by more with the
NumPy backend), while in float64 every backend and instruction set prints the
same four digits. The other columns agree in either precision.
"""
import argparse

import numpy as np

import retroprop as rp
from retroprop.callbacks import GradientMonitor


def standard_normal(shape, rng, dtype="float32"):
    """N(0, 1) weights: the naive initialisation of the lesson."""
    return rng.standard_normal(shape).astype(dtype)


CONFIGS = [
    ("tanh, N(0,1)", "tanh", standard_normal),
    ("tanh, Glorot", "tanh", "glorot_uniform"),
    ("sigmoid, Glorot", "sigmoid", "glorot_uniform"),
    ("ReLU, He", "relu", "he_normal"),
]
TABLES = (("act_std", "activation std"), ("grad_std", "kernel-gradient std"))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--units", type=int, default=500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the networks (see above)")
    p.add_argument("--png", default="vanishing_gradients.png",
                   help="where to write the figure ('' for none)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    return p.parse_args()


def build(activation, init, layers, units, seed, dtype="float64"):
    hidden = [rp.layers.Dense(units, activation=activation, kernel_initializer=init)
              for _ in range(layers)]
    output = rp.layers.Dense(10, activation="softmax", kernel_initializer="glorot_uniform")
    return rp.Sequential(hidden + [output], input_shape=(784,), seed=seed, dtype=dtype)


def measure(layers=10, units=500, batch=256, seed=0, dtype="float64"):
    """{configuration title: per-hidden-layer statistics} (what the tables print)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    columns = {}
    for title, activation, init in CONFIGS:
        model = build(activation, init, layers, units, seed, dtype)
        monitor = GradientMonitor(x, y)
        stats = monitor.record(model, "categorical_crossentropy")
        columns[title] = stats[:layers]       # the hidden layers, not the output
    return columns


def print_table(columns, key, label, layers, markdown):
    titles = list(columns)
    print(f"\nPer-layer {label} (layer 1 = next to the input)\n")
    if markdown:
        print("| layer | " + " | ".join(titles) + " |")
        print("|---:|" + "---:|" * len(titles))
        for i in range(layers):
            print(f"| {i + 1} | " + " | ".join(f"{columns[t][i][key]:.3e}" for t in titles)
                  + " |")
        return
    print(f"{'layer':>6}" + "".join(f"{t:>18}" for t in titles))
    for i in range(layers):
        print(f"{i + 1:>6}" + "".join(f"{columns[t][i][key]:>18.3e}" for t in titles))


def plot(columns, layers, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(matplotlib is not installed: no figure written)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    positions = np.arange(1, layers + 1)
    for ax, (key, label) in zip(axes, TABLES):
        for title, stats in columns.items():
            ax.semilogy(positions, [s[key] for s in stats], "o-", label=title)
        ax.set_xlabel("hidden layer (1 = next to the input)")
        ax.set_title(f"per-layer {label} at initialisation")
        ax.set_xticks(positions)
        ax.grid(True, which="major", alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"\nwrote {path}")


def main():
    args = parse_args()
    columns = measure(args.layers, args.units, args.batch, args.seed, args.dtype)
    for key, label in TABLES:
        print_table(columns, key, label, args.layers, args.markdown)
    if args.png:
        plot(columns, args.layers, args.png)


if __name__ == "__main__":
    main()
