"""The neuron: a sigmoid unit with a slope, Heaviside threshold units, and the
activation functions side by side (value and derivative).

    python examples/neuron.py [--out DIR] [--quick]

* A sigmoid neuron y = sigmoid(a (w . x + b)) with w = (1, 1), b = -2 for the
  slopes a = 10, 1, 0.1: the larger a, the closer to a threshold (Heaviside)
  unit that fires when x1 + x2 >= 2; the smaller a, the flatter and more
  linear around the threshold.
* The Heaviside unit itself ("step"), as a retroprop activation.
* sigmoid'(1.0) = sigmoid(1) (1 - sigmoid(1)) ~ 0.20, from the C kernel.
* A panel of sigmoid, tanh, ReLU, leaky ReLU, ELU and GELU, value and
  derivative, written to DIR/activations.png (docs/activations.png in the
  docs), with the remarks of the course about each.

``--quick`` is accepted for symmetry with the other examples (this one is
fast anyway). Every number printed comes from retroprop's layers and kernels.
"""
import argparse
import os

import numpy as np

import retroprop as rp
from retroprop.layers import Dense

POINTS = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.5], [1.0, 1.0], [1.5, 1.0], [2.0, 2.0]])
SLOPES = (10.0, 1.0, 0.1)
PANEL = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu")
REMARKS = {
    "sigmoid": ("(0, 1)", "no", "both sides", "exp"),
    "tanh": ("(-1, 1)", "yes", "both sides", "exp"),
    "relu": ("[0, inf)", "no", "left side (dead units)", "a comparison"),
    "leaky_relu": ("(-inf, inf)", "roughly", "no", "a comparison"),
    "elu": ("(-alpha, inf)", "roughly", "left side, softly", "exp for x < 0"),
    "gelu": ("(-0.17, inf)", "roughly", "left side, softly", "tanh and a cubic"),
}


def neuron(activation):
    """Dense(1) with w = (1, 1), b = -2 and the given activation."""
    model = rp.Sequential([Dense(1, activation=activation)], input_shape=(2,),
                          dtype="float64", seed=0)
    model.layers[0].params["W"][...] = [[1.0], [1.0]]
    model.layers[0].params["b"][...] = [-2.0]
    return model


def derivative(name, x):
    """act'(x) from retroprop's own backward (dy = 1)."""
    act = rp.activations.get(name)
    backend = rp.backend.get_backend()
    y = act.forward(x, backend)
    return act.backward(y, np.ones_like(x), backend, x=x)


def panel(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.linspace(-4, 4, 401)
    backend = rp.backend.get_backend()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True)
    for ax, name in zip(axes.ravel(), PANEL):
        y = rp.activations.get(name).forward(x, backend)
        ax.plot(x, y, label="value")
        ax.plot(x, derivative(name, x), "--", label="derivative")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(name)
        ax.set_ylim(-1.2, 2.2)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left")
    fig.suptitle("activations (solid) and their derivatives (dashed), from retroprop's kernels")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".", help="directory for activations.png")
    p.add_argument("--quick", action="store_true", help="(fast anyway)")
    args = p.parse_args(argv)
    results = {}

    print("A sigmoid neuron y = sigmoid(a (w.x + b)), w = (1, 1), b = -2\n")
    header = f"{'x':>12}{'w.x+b':>8}" + "".join(f"{'a = ' + str(a):>12}" for a in SLOPES) \
        + f"{'Heaviside':>12}"
    print(header)
    outputs = {a: neuron(rp.activations.get("sigmoid", slope=a)).predict(POINTS)[:, 0]
               for a in SLOPES}
    step = neuron("step").predict(POINTS)[:, 0]
    for i, point in enumerate(POINTS):
        z = point.sum() - 2.0
        print(f"{f'({point[0]:g}, {point[1]:g})':>12}{z:>8.1f}" + "".join(f"{outputs[a][i]:>12.4f}"
                                                           for a in SLOPES)
              + f"{step[i]:>12.0f}")
    results["outputs"] = outputs
    results["heaviside"] = step
    print("\na = 10 is nearly the threshold unit; a = 0.1 stays near 0.5, almost linear.")

    s1 = float(derivative("sigmoid", np.array([1.0]))[0])
    results["sigmoid_prime_1"] = s1
    print(f"\nsigmoid'(1.0) = sigmoid(1) (1 - sigmoid(1)) = {s1:.4f}  (~ 0.20; at most 0.25, at 0)")

    print(f"\n{'activation':<12}{'range':<15}{'zero-centred':<14}{'saturates':<24}cost")
    for name in PANEL:
        rng_, centred, saturates, cost = REMARKS[name]
        print(f"{name:<12}{rng_:<15}{centred:<14}{saturates:<24}{cost}")
    grid = np.array([-6.0, -2.0, 0.0, 2.0, 6.0])
    print(f"\nderivatives at x = {grid.tolist()}:")
    for name in PANEL:
        d = derivative(name, grid)
        results[f"d_{name}"] = d
        print(f"  {name:<11}" + " ".join(f"{v:8.4f}" for v in d))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("\n(matplotlib is not installed: no panel written)")
    else:
        os.makedirs(args.out, exist_ok=True)
        results["png"] = panel(os.path.join(args.out, "activations.png"))
        print(f"\nwrote {results['png']}")
    return results


if __name__ == "__main__":
    main()
