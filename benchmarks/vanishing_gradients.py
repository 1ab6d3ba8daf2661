"""Vanishing gradients in a deep MLP: how initialisation and activation change them.

    python benchmarks/vanishing_gradients.py [--layers 10] [--units 500] [--batch 256]

Builds four 10-layer, 500-unit MLPs on the same random data (784 inputs,
10 classes, softmax + cross-entropy) and prints, per hidden layer, the
standard deviation of its activations and of the loss gradient w.r.t. its
kernel, from one forward/backward pass (no training):

* tanh, weights ~ N(0, 1): saturated units (activation std ~ 1); the kernel
  gradient changes scale by a large factor per layer (with 500 inputs the
  huge weights outweigh the small tanh' and it *grows* toward the input),
  so the layers learn at wildly different rates
* tanh, Glorot uniform: activations and gradients keep their scale
* sigmoid, Glorot uniform: gradients shrink layer after layer (sigmoid' <= 1/4)
* ReLU, He normal: the He scaling keeps the variance through ReLUs
"""
import argparse

import numpy as np

import retroprop as rp
from retroprop.callbacks import gradient_statistics

CONFIGS = [
    ("tanh, N(0,1)", "tanh", lambda shape, rng, dtype="float32":
        rng.standard_normal(shape).astype(dtype)),
    ("tanh, Glorot", "tanh", "glorot_uniform"),
    ("sigmoid, Glorot", "sigmoid", "glorot_uniform"),
    ("ReLU, He", "relu", "he_normal"),
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--units", type=int, default=500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build(activation, init, layers, units, seed):
    hidden = [rp.layers.Dense(units, activation=activation, kernel_initializer=init)
              for _ in range(layers)]
    output = rp.layers.Dense(10, activation="softmax", kernel_initializer="glorot_uniform")
    return rp.Sequential(hidden + [output], input_shape=(784,), seed=seed)


def main():
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=args.batch)
    columns = {}
    for title, activation, init in CONFIGS:
        model = build(activation, init, args.layers, args.units, args.seed)
        stats = gradient_statistics(model, "categorical_crossentropy", x, y)[:args.layers]
        columns[title] = stats
    titles = [c[0] for c in CONFIGS]
    for key, label in (("act_std", "activation std"), ("grad_std", "kernel-gradient std")):
        print(f"\nPer-layer {label} (layer 1 = next to the input)")
        print(f"{'layer':>6}" + "".join(f"{t:>18}" for t in titles))
        for i in range(args.layers):
            row = "".join(f"{columns[t][i][key]:>18.3e}" for t in titles)
            print(f"{i + 1:>6}" + row)


if __name__ == "__main__":
    main()
