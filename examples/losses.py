"""Losses: the multiclass hinge, softmax + cross-entropy and its gradient
y_hat - y, hinge vs cross-entropy on separable data, and why a softmax
output wants cross-entropy rather than a squared loss.

    python examples/losses.py [--quick]

1. The three-image example: scores [[2.3, 4.1, -2.1], [1.7, 5.4, 2.3],
   [1.7, 1.4, -1.3]] for classes [0, 1, 2] give per-image hinge losses
   2.8, 0 and 7.7, mean 3.5. softmax(1.7, 1.4, -1.3) = (0.558, 0.414,
   0.028), and the cross-entropy of a prediction giving the true class 0.8 is
   -log 0.8 = 0.2231.
2. With a softmax output the gradient of the cross-entropy with respect to
   the scores is y_hat - y: retroprop's fused backward pass against that
   formula and against finite differences.
3. On linearly separable data the hinge loss reaches exactly 0 and its
   gradient vanishes: the weights stop. Cross-entropy never reaches 0, so it
   keeps pushing the scores apart (the weight norm keeps growing).
4. The same softmax classifier (8x8 digits) trained with cross-entropy and
   with the squared error on the probabilities: the squared loss learns
   more slowly (its gradient carries the softmax's saturating derivative).

``--quick`` trains for fewer epochs.
"""
import argparse

import numpy as np

import retroprop as rp
from retroprop.layers import Dense

SCORES = np.array([[2.3, 4.1, -2.1], [1.7, 5.4, 2.3], [1.7, 1.4, -1.3]])
LABELS = np.array([0, 1, 2])


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def separable_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    return centres[y] + rng.standard_normal((n, 2)) * 0.5, y


def linear_scores_model(last_activation=None, seed=0):
    return rp.Sequential([Dense(3, activation=last_activation)], input_shape=(2,),
                         dtype="float64", seed=seed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    results = {}

    hinge = rp.losses.get("hinge")
    per_image = [hinge(LABELS[i:i + 1], SCORES[i:i + 1]) for i in range(3)]
    results["hinge"] = hinge(LABELS, SCORES)
    sm = rp.activations.get("softmax").forward(np.array([1.7, 1.4, -1.3]),
                                               rp.backend.get_backend())
    results["softmax"] = sm
    results["cross_entropy_0.8"] = rp.losses.get("categorical_crossentropy")(
        [0], np.array([[0.8, 0.15, 0.05]]))
    print("1. worked numbers")
    print(f"   hinge per image {np.round(per_image, 4).tolist()}, mean {results['hinge']:.4f}")
    print(f"   softmax(1.7, 1.4, -1.3) = {np.round(sm, 3).tolist()}")
    print(f"   cross-entropy with p(true) = 0.8: {results['cross_entropy_0.8']:.4f}")

    print("\n2. softmax + cross-entropy: dL/dscores = y_hat - y (per sample)")
    model = rp.Sequential([Dense(3, activation="softmax")], input_shape=(3,), dtype="float64")
    model.set_weights([np.eye(3), np.zeros(3)])       # the scores are the inputs themselves
    ce = rp.losses.get("categorical_crossentropy")
    y_hat = model.forward(SCORES)
    # The layer's logits are the scores themselves (identity weights, zero bias).
    _, dz = ce.fused_with_softmax(SCORES, LABELS, model.backend)
    formula = (softmax(SCORES) - np.eye(3)[LABELS]) / 3
    numeric = np.zeros_like(SCORES)
    for i in range(SCORES.size):
        s = SCORES.copy()
        s.flat[i] += 1e-6
        plus = ce(LABELS, softmax(s))
        s.flat[i] -= 2e-6
        minus = ce(LABELS, softmax(s))
        numeric.flat[i] = (plus - minus) / 2e-6
    results["grad_vs_formula"] = float(np.max(np.abs(dz - formula)))
    results["grad_vs_numeric"] = float(np.max(np.abs(dz - numeric)))
    print(f"   y_hat = {np.round(y_hat, 3).tolist()}")
    print(f"   retroprop's dL/dz * N = {np.round(dz * 3, 4).tolist()}")
    print(f"   |retroprop - (y_hat - y)/N| <= {results['grad_vs_formula']:.1e}, "
          f"|retroprop - finite differences| <= {results['grad_vs_numeric']:.1e}")

    print("\n3. separable data: hinge reaches 0, cross-entropy keeps pushing")
    x, y = separable_data()
    epochs = 100 if args.quick else 200
    curves = {}
    for name, loss, act in (("hinge", "hinge", None), ("cross-entropy",
                                                       "categorical_crossentropy", "softmax")):
        model = linear_scores_model(act)
        norms = []

        class Norm(rp.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                norms.append(float(np.linalg.norm(self.model.layers[0].params["W"])))

        history = rp.Trainer(model, loss, rp.optim.SGD(lr=0.05), metrics=["accuracy"],
                             callbacks=[Norm()]).fit(x, y, epochs=epochs, batch_size=200,
                                                     verbose=0)
        curves[name] = (history.history["loss"], norms, history.history["accuracy"][-1])
    for name, (loss_curve, norms, acc) in curves.items():
        marks = [0, epochs // 4, epochs // 2, epochs - 1]
        print(f"   {name:<14} loss at epochs {[m + 1 for m in marks]}: "
              f"{[float(f'{loss_curve[m]:.3g}') for m in marks]}; ||W|| "
              f"{norms[marks[1]]:.3f} -> {norms[-1]:.3f}; accuracy {acc:.2f}")
    hinge_loss, hinge_norms, _ = curves["hinge"]
    ce_loss, ce_norms, _ = curves["cross-entropy"]
    zero_at = next((i for i, v in enumerate(hinge_loss) if v == 0.0), None)
    results["hinge_final_loss"] = hinge_loss[-1]
    results["hinge_zero_epoch"] = zero_at
    results["hinge_norm_change_after_zero"] = (abs(hinge_norms[-1] - hinge_norms[zero_at])
                                               if zero_at is not None else None)
    results["ce_final_loss"] = ce_loss[-1]
    results["ce_norm_growth"] = ce_norms[-1] - ce_norms[len(ce_norms) // 2]
    if zero_at is not None:
        print(f"   the hinge loss is exactly 0 from epoch {zero_at + 1} on, and ||W|| then "
              f"moves by {results['hinge_norm_change_after_zero']:.1e}")
    print(f"   cross-entropy is still {ce_loss[-1]:.3g} > 0 and ||W|| grew by "
          f"{results['ce_norm_growth']:.3f} over the second half")

    print("\n4. a softmax classifier on 8x8 digits: cross-entropy vs squared error")
    (xd, yd), (xt, yt) = rp.datasets.load_digits()
    xd = xd.reshape(len(xd), -1).astype(np.float64)
    xt = xt.reshape(len(xt), -1).astype(np.float64)
    onehot, onehot_test = np.eye(10)[yd], np.eye(10)[yt]
    epochs = 5 if args.quick else 20
    for name, loss in (("cross-entropy", "categorical_crossentropy"), ("squared error", "mse")):
        model = rp.Sequential([Dense(10, activation="softmax")], input_shape=(64,),
                              dtype="float64", seed=0)
        trainer = rp.Trainer(model, loss, rp.optim.SGD(lr=0.1), metrics=["accuracy"])
        history = trainer.fit(xd, onehot, epochs=epochs, batch_size=32, verbose=0)
        acc = trainer.evaluate(xt, onehot_test)["accuracy"]
        results[f"digits_{loss}"] = acc
        first = history.history["accuracy"][0]
        print(f"   {name:<14} train accuracy after epoch 1: {first:.3f}, test accuracy after "
              f"{epochs} epochs: {acc:.3f}")
    return results


if __name__ == "__main__":
    main()
