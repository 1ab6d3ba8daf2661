"""Exploding (and vanishing) gradients through time in a SimpleRNN, and gradient clipping.

    python examples/rnn_exploding_gradients.py [--quick]

1. Backpropagation through time multiplies the gradient by U^T tanh'(z_t)
   once per step. With the recurrent kernel U = g * (a random orthogonal
   matrix) and small inputs (tanh in its linear part), the gradient reaching
   step t from the last step is about g^(T - t) times larger: it vanishes
   for g = 0.5 and explodes for g = 2. Printed: ||dL/dx_t|| for a few t.
2. Training an RNN from g = 2 to output x_1 + x_2 after 20 steps, plain SGD
   (lr 0.05): without clipping, gradient norms reach the hundreds and the
   loss jumps back up; with ``clipnorm=1.0`` (every optimizer takes it, and
   ``clipvalue`` / ``global_clipnorm``) each parameter's gradient is
   rescaled to norm <= 1 and the loss goes down steadily.

``--quick``: fewer epochs.
"""
import argparse

import numpy as np

import retroprop as rp
from retroprop.layers import LSTM, Dense, SimpleRNN
from retroprop.layers.rnn import orthogonal


def scaled_orthogonal(g):
    def init(shape, rng, dtype="float32"):
        return (orthogonal(shape, rng, "float64") * g).astype(dtype)
    init.__name__ = f"orthogonal_times_{g:g}"
    return init


class GradientNorm(rp.callbacks.Callback):
    """Global L2 norm of the gradients the optimizer used, after every batch."""

    def __init__(self):
        super().__init__()
        self.norms = []

    def on_batch_end(self, batch, logs=None):
        self.norms.append(float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2)
                                            for _, _, g in self.model.named_parameters()))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    results = {}

    steps = 40
    x = np.random.default_rng(0).standard_normal((64, steps, 1)) * 0.1
    print(f"1. ||dL/dx_t|| through {steps} steps (dL/dh_T = 1), U = g * orthogonal, tanh")
    shown = (0, 10, 20, 30, 39)
    print(f"   {'g':>4}" + "".join(f"{'t=' + str(t + 1):>11}" for t in shown))
    for g in (0.5, 1.0, 2.0):
        layer = SimpleRNN(32, recurrent_initializer=scaled_orthogonal(g))
        layer.build((steps, 1), "float64", np.random.default_rng(1))
        y = layer.forward(x)
        norms = np.linalg.norm(layer.backward(np.ones_like(y)), axis=(0, 2))
        results[f"through_time g={g}"] = norms
        print(f"   {g:>4}" + "".join(f"{norms[t]:>11.2e}" for t in shown))
    lstm = LSTM(32)
    lstm.build((steps, 1), "float64", np.random.default_rng(1))
    y = lstm.forward(x)
    norms = np.linalg.norm(lstm.backward(np.ones_like(y)), axis=(0, 2))
    results["through_time lstm"] = norms
    print("   LSTM" + "".join(f"{norms[t]:>11.2e}" for t in shown)
          + "   (default init: forget-gate bias 1)")

    print("\n2. learning y = x_1 + x_2 from 20-step sequences, U = 2 * orthogonal, SGD lr 0.05")
    rng = np.random.default_rng(0)
    seq = 20
    xs = rng.standard_normal((512, seq, 1)).astype(np.float32)
    ys = xs[:, :2, 0].sum(axis=1, keepdims=True)
    epochs = 8 if args.quick else 15
    for name, clip in (("no clipping", None), ("clipnorm=1.0", 1.0)):
        model = rp.Sequential([SimpleRNN(16, recurrent_initializer=scaled_orthogonal(2.0)),
                               Dense(1)], input_shape=(seq, 1), seed=0)
        monitor = GradientNorm()
        trainer = rp.Trainer(model, "mse", rp.optim.SGD(lr=0.05, clipnorm=clip), metrics=[],
                             callbacks=[monitor])
        loss = trainer.fit(xs, ys, epochs=epochs, batch_size=32, verbose=0).history["loss"]
        results[name] = {"loss": loss, "max_grad_norm": max(monitor.norms)}
        print(f"   {name:<13} loss per epoch {[round(v, 3) for v in loss]}")
        print(f"   {'':<13} largest gradient norm used in a step: {max(monitor.norms):.1f}")
    return results


if __name__ == "__main__":
    main()
