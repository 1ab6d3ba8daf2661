"""Gradient descent: on a plain function, online vs mini-batch vs full batch,
and learning-rate decay.

    python examples/gradient_descent.py [--out DIR] [--quick]

1. ``rp.minimize`` on f(x, y) = x^2 + 10 y^2 from (3, -2): plain gradient
   descent x <- x - lr grad f(x) until ||grad f|| <= 1e-6, for a few step
   sizes (too large a step diverges: here any lr > 0.1), then momentum and
   Adam through the same loop.
2. The same linear-regression data (512 samples, 10 features, noise 0.1)
   fitted by SGD with batch size 1 (online), 32 (mini-batch) and 512 (full
   batch), for the same number of epochs: the loss against epochs and
   against updates (DIR/batch_sizes.png).
3. The course's learning-rate decays, per epoch: 1/(1 + k t) scaled to
   0.1 / (1 + 0.1 t), exponential 0.1 e^(-0.1 t), step 0.1 * 0.5^floor(t / 10),
   their values and what they do to a mini-batch fit.

``--quick`` runs fewer epochs and skips the figures.
"""
import argparse
import os

import numpy as np

import retroprop as rp
from retroprop.layers import Dense


def f(v):
    return v[0] ** 2 + 10.0 * v[1] ** 2


def grad_f(v):
    return np.array([2.0 * v[0], 20.0 * v[1]])


def regression_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 10))
    w = rng.standard_normal((10, 1))
    y = x @ w + 0.5 + 0.1 * rng.standard_normal((512, 1))
    return x, y


def fit_linear(x, y, batch_size, epochs, lr, schedule=None, seed=0):
    """Loss after every epoch (first: before training) of a linear model fitted by SGD."""
    model = rp.Sequential([Dense(1)], input_shape=(10,), dtype="float64", seed=seed)
    losses = [rp.losses.get("mse")(y, model.predict(x))]

    class Record(rp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            losses.append(rp.losses.get("mse")(y, self.model.predict(x)))

    callbacks = [Record()]
    if schedule is not None:
        callbacks.append(rp.callbacks.LearningRateScheduler(schedule))
    rp.Trainer(model, "mse", rp.optim.SGD(lr=lr), metrics=[], callbacks=callbacks).fit(
        x, y, epochs=epochs, batch_size=batch_size, verbose=0, seed=seed)
    return losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".", help="directory for the figures")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    results = {}

    print("1. minimize f(x, y) = x^2 + 10 y^2 from (3, -2), stop at ||grad f|| <= 1e-6")
    for lr in (0.01, 0.05, 0.09):
        r = rp.minimize(f, [3.0, -2.0], grad=grad_f, lr=lr, eps=1e-6)
        results[f"gd_{lr}"] = r
        print(f"   plain GD lr {lr:<5} {r.steps:>5} steps -> x = {np.round(r.x, 8).tolist()}, "
              f"||grad|| = {r.grad_norm:.1e}")
    # lr > 0.1: along y each step multiplies by |1 - 20 lr| > 1, so f grows.
    wild = rp.minimize(f, [3.0, -2.0], grad=grad_f, lr=0.11, eps=1e-6, max_steps=40)
    results["diverging_f"] = wild.history["f"]
    print(f"   plain GD lr 0.11  diverges: f = {wild.history['f'][0]:.0f}, "
          f"{wild.history['f'][20]:.0f}, {wild.history['f'][40]:.0f} after 0, 20, 40 steps")
    momentum = rp.minimize(f, [3.0, -2.0], grad=grad_f, eps=1e-6,
                           optimizer=rp.optim.SGD(lr=0.05, momentum=0.8))
    adam = rp.minimize(f, [3.0, -2.0], grad=grad_f, eps=1e-6, max_steps=20000,
                       optimizer=rp.optim.Adam(lr=0.1))
    results["momentum"], results["adam"] = momentum, adam
    print(f"   momentum 0.8, lr 0.05: {momentum.steps} steps; Adam lr 0.1: {adam.steps} steps")
    numeric = rp.minimize(f, [3.0, -2.0], lr=0.05, eps=1e-5)
    print(f"   without grad= (central differences), lr 0.05: {numeric.steps} steps -> "
          f"{np.round(numeric.x, 6).tolist()}")

    print("\n2. online vs mini-batch vs full batch (linear regression, 512 samples)")
    x, y = regression_data()
    epochs = 8 if args.quick else 30
    curves = {}
    for name, batch, lr in (("online (batch 1)", 1, 0.01), ("mini-batch 32", 32, 0.05),
                            ("full batch 512", 512, 0.1)):
        curves[name] = (fit_linear(x, y, batch, epochs, lr), 512 // batch)
        loss = curves[name][0]
        print(f"   {name:<18} lr {lr:<5} updates/epoch {512 // batch:>4}: loss "
              f"{loss[0]:.3f} -> {loss[1]:.4f} (epoch 1) -> {loss[-1]:.4f} (epoch {epochs})")
    results["batch_curves"] = {k: v[0] for k, v in curves.items()}

    print("\n3. learning-rate decay, per epoch t")
    schedules = {
        "1/(1+kt): 0.1/(1+0.1t)": rp.schedules.InverseTimeDecay(0.1, 0.1),
        "0.1 e^(-0.1t)": rp.schedules.ExponentialDecay(0.1, 0.1),
        "0.1 * 0.5^floor(t/10)": rp.schedules.StepDecay(0.1, 0.5, 10),
    }
    ts = (0, 1, 5, 10, 20, 30)
    print(f"   {'schedule':<24}" + "".join(f"{'t=' + str(t):>9}" for t in ts))
    for name, s in schedules.items():
        values = [s(t) for t in ts]
        results[f"schedule {name}"] = values
        print(f"   {name:<24}" + "".join(f"{v:>9.4f}" for v in values))
    decay_epochs = 10 if args.quick else 30
    for name, s in list(schedules.items()) + [("constant 0.1", lambda t: 0.1)]:
        loss = fit_linear(x, y, 32, decay_epochs, 0.1, schedule=s)
        results[f"decay_loss {name}"] = loss[-1]
        print(f"   mini-batch 32 with {name:<24} final loss {loss[-1]:.5f}")

    if not args.quick:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("\n(matplotlib is not installed: no figures written)")
        else:
            os.makedirs(args.out, exist_ok=True)
            fig, axes = plt.subplots(1, 3, figsize=(15, 4))
            path = results["gd_0.05"].history["x"]
            grid = np.linspace(-3.5, 3.5, 200)
            gx, gy = np.meshgrid(grid, grid / 1.5)
            axes[0].contour(gx, gy, gx ** 2 + 10 * gy ** 2, levels=20, linewidths=0.5)
            for r, label in ((results["gd_0.05"], "GD lr 0.05"), (momentum, "momentum")):
                pts = np.array(r.history["x"])
                axes[0].plot(pts[:, 0], pts[:, 1], ".-", ms=3, label=label)
            axes[0].set_title("minimize x^2 + 10 y^2")
            axes[0].legend(fontsize="small")
            for name, (loss, per_epoch) in curves.items():
                axes[1].semilogy(range(len(loss)), loss, label=name)
                axes[2].semilogy(np.arange(len(loss)) * per_epoch + 1, loss, label=name)
            axes[1].set_xlabel("epochs")
            axes[2].set_xlabel("updates (log)")
            axes[2].set_xscale("log")
            for ax in axes[1:]:
                ax.set_ylabel("mse")
                ax.legend(fontsize="small")
            fig.tight_layout()
            results["png"] = os.path.join(args.out, "batch_sizes.png")
            fig.savefig(results["png"], dpi=80)
            plt.close(fig)
            print(f"\nwrote {results['png']} ({len(path)} points on the GD path)")
    return results


if __name__ == "__main__":
    main()
