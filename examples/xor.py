"""XOR: not linearly separable; an MLP learns it; threshold units wired by hand;
universal approximation with step units (a pulse and a staircase).

    python examples/xor.py [--out DIR] [--quick]

1. Logistic regression (one sigmoid unit) trained on the four XOR points
   cannot do better than a constant: every prediction stays near 0.5 and the
   loss near log 2 = 0.693.
2. A 2-4-1 MLP (tanh hidden units) learns it.
3. XOR from threshold (Heaviside) units set by hand:
   h1 = [x - y >= 0.5] (x AND NOT y), h2 = [y - x >= 0.5] (NOT x AND y),
   out = [h1 + h2 >= 0.5] (h1 OR h2).
4. Universal approximation with step units: two steps make a pulse
   (1 on [a, b)), and n steps with heights f(t_i) - f(t_{i-1}) make a
   staircase that approaches any continuous f as n grows (the max error of
   the staircase of sin(2 pi x) falls like 1/n).

``--quick`` trains the MLP for fewer epochs (it still learns XOR) and skips
the figure.
"""
import argparse
import os

import numpy as np

import retroprop as rp
from retroprop.layers import Dense

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
Y = np.array([0, 1, 1, 0], dtype=np.float64)


def set_weights(layer, w, b):
    layer.params["W"][...] = w
    layer.params["b"][...] = b


def logistic_regression(epochs):
    model = rp.Sequential([Dense(1, activation="sigmoid")], input_shape=(2,), dtype="float64",
                          seed=0)
    trainer = rp.Trainer(model, "binary_crossentropy", rp.optim.SGD(lr=0.5), metrics=[])
    history = trainer.fit(X, Y, epochs=epochs, batch_size=4, verbose=0)
    return model, history.history["loss"][-1]


def mlp(epochs):
    model = rp.Sequential([Dense(4, activation="tanh"), Dense(1, activation="sigmoid")],
                          input_shape=(2,), dtype="float64", seed=1)
    trainer = rp.Trainer(model, "binary_crossentropy", rp.optim.SGD(lr=0.5, momentum=0.9),
                         metrics=[])
    history = trainer.fit(X, Y, epochs=epochs, batch_size=4, verbose=0)
    return model, history.history["loss"][-1]


def xor_by_hand():
    model = rp.Sequential([Dense(2, activation="step"), Dense(1, activation="step")],
                          input_shape=(2,), dtype="float64")
    set_weights(model.layers[0], [[1.0, -1.0], [-1.0, 1.0]], [-0.5, -0.5])
    set_weights(model.layers[1], [[1.0], [1.0]], [-0.5])
    return model


def step_network(thresholds, heights, offset=0.0):
    """sum_i heights[i] * [x >= thresholds[i]] + offset: one hidden step unit per threshold."""
    n = len(thresholds)
    model = rp.Sequential([Dense(n, activation="step"), Dense(1)], input_shape=(1,),
                          dtype="float64")
    set_weights(model.layers[0], np.ones((1, n)), -np.asarray(thresholds))
    set_weights(model.layers[1], np.asarray(heights).reshape(n, 1), [offset])
    return model


def staircase(f, n):
    """n steps on [0, 1]: the value f(t_i) from t_i = i / n on."""
    t = np.arange(n) / n
    values = f(t)
    heights = np.diff(values, prepend=0.0)
    return step_network(t, heights)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".", help="directory for xor_staircase.png")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    results = {}

    lr_model, lr_loss = logistic_regression(300 if args.quick else 2000)
    p_lr = lr_model.predict(X)[:, 0]
    results["logreg_pred"], results["logreg_loss"] = p_lr, lr_loss
    results["logreg_accuracy"] = float(np.mean((p_lr >= 0.5) == Y))
    print("1. logistic regression on XOR")
    print(f"   predictions {np.round(p_lr, 3).tolist()}  loss {lr_loss:.4f} "
          f"(log 2 = {np.log(2):.4f})  accuracy {results['logreg_accuracy']:.2f}")

    net, net_loss = mlp(400 if args.quick else 1000)
    p_net = net.predict(X)[:, 0]
    results["mlp_pred"], results["mlp_loss"] = p_net, net_loss
    results["mlp_accuracy"] = float(np.mean((p_net >= 0.5) == Y))
    print("\n2. a 2-4-1 MLP (tanh, sigmoid), SGD with momentum")
    print(f"   predictions {np.round(p_net, 3).tolist()}  loss {net_loss:.4f}  "
          f"accuracy {results['mlp_accuracy']:.2f}")

    hand = xor_by_hand()
    out = hand.predict(X)[:, 0]
    hidden = hand.layers[0].forward(X)
    results["hand"] = out
    print("\n3. XOR from threshold units, weights set by hand")
    print("    x  y | x AND NOT y  NOT x AND y | OR")
    for (x1, x2), (h1, h2), o in zip(X, hidden, out):
        print(f"    {x1:.0f}  {x2:.0f} |      {h1:.0f}            {h2:.0f}      |  {o:.0f}")

    print("\n4. universal approximation with step units")
    pulse = step_network([0.3, 0.6], [1.0, -1.0])
    xs = np.array([[0.0], [0.29], [0.3], [0.45], [0.59], [0.6], [0.9]])
    results["pulse"] = pulse.predict(xs)[:, 0]
    print("   pulse = [x >= 0.3] - [x >= 0.6] at x = "
          f"{xs[:, 0].tolist()}: {results['pulse'].tolist()}")
    f = lambda t: np.sin(2 * np.pi * t)  # noqa: E731
    grid = np.linspace(0, 1, 2001, endpoint=False).reshape(-1, 1)
    errors = {}
    for n in (5, 20, 100, 500):
        approx = staircase(f, n).predict(grid)[:, 0]
        errors[n] = float(np.max(np.abs(approx - f(grid[:, 0]))))
        print(f"   staircase of sin(2 pi x) with {n:>3} step units: max error {errors[n]:.4f}"
              f"   (n * error = {n * errors[n]:.2f})")
    results["staircase_errors"] = errors
    if not args.quick:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("\n(matplotlib is not installed: no figure written)")
        else:
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
            axes[0].plot(grid[:, 0], pulse.predict(grid)[:, 0])
            axes[0].set_title("pulse: two step units")
            axes[1].plot(grid[:, 0], f(grid[:, 0]), "k", lw=1, label="sin(2 pi x)")
            for n in (5, 20):
                axes[1].plot(grid[:, 0], staircase(f, n).predict(grid)[:, 0],
                             label=f"{n} step units")
            axes[1].legend(fontsize="small")
            axes[1].set_title("staircases")
            fig.tight_layout()
            os.makedirs(args.out, exist_ok=True)
            results["png"] = os.path.join(args.out, "xor_staircase.png")
            fig.savefig(results["png"], dpi=80)
            plt.close(fig)
            print(f"\nwrote {results['png']}")
    return results


if __name__ == "__main__":
    main()
