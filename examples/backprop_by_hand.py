"""Backpropagation by hand, next to retroprop's gradients.

    python examples/backprop_by_hand.py [--quick]

1. A 2-2-1 sigmoid network with the course's quadratic cost C = 1/2 (a - y)^2
   (``loss="half_mse"``): the output error delta^2 = (a - y) sigma'(z^2), the
   hidden errors delta^1 = (W^2 delta^2) * sigma'(z^1), and the gradients
   dC/dW^l = a^(l-1) delta^l, dC/db^l = delta^l, written out in NumPy and
   compared with what retroprop's backward pass computes.
2. The scalar network x -> sigma(w1 x + b1) = h -> sigma(w2 h + b2) = p with
   binary cross-entropy, whose four gradients have closed forms
   (the sigmoid's derivative cancels against the cross-entropy's):
       dL/dw2 = (p - y) h          dL/db2 = p - y
       dL/dw1 = (p - y) w2 h (1 - h) x     dL/db1 = (p - y) w2 h (1 - h)
3. Training that scalar network by full-batch gradient descent (lr 1) on two
   samples, x = -1 (label 1) and x = +1 (label 0), from w1 = 2, b1 = -1,
   w2 = 1, b2 = 0: the predictions go from (0.51, 0.68) to (0.99, 0.01) in
   500 steps, in retroprop and in the closed-form NumPy loop alike.

``--quick`` changes nothing (the example takes about a second).
"""
import argparse

import numpy as np

import retroprop as rp
from retroprop.layers import Dense


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# -- 1. the 2-2-1 network --------------------------------------------------------

X1 = np.array([[0.05, 0.10]])
Y1 = np.array([[0.01]])
W1 = np.array([[0.15, 0.25], [0.20, 0.30]])   # (inputs, hidden): column j feeds hidden unit j
B1 = np.array([0.35, 0.35])
W2 = np.array([[0.40], [0.45]])
B2 = np.array([0.60])


def deltas_by_hand():
    z1 = X1 @ W1 + B1
    a1 = sigmoid(z1)
    z2 = a1 @ W2 + B2
    a2 = sigmoid(z2)
    cost = 0.5 * float(((a2 - Y1) ** 2).sum())
    delta2 = (a2 - Y1) * a2 * (1 - a2)              # dC/dz2
    delta1 = (delta2 @ W2.T) * a1 * (1 - a1)        # dC/dz1
    grads = {"W2": a1.T @ delta2, "b2": delta2[0], "W1": X1.T @ delta1, "b1": delta1[0]}
    return a2, cost, delta2, delta1, grads


def retroprop_221():
    model = rp.Sequential([Dense(2, activation="sigmoid"), Dense(1, activation="sigmoid")],
                          input_shape=(2,), dtype="float64")
    model.set_weights([W1, B1, W2, B2])
    loss = rp.losses.get("half_mse")
    a2 = model.forward(X1)
    cost = loss(Y1, a2)
    model.backward(loss.gradient(Y1, a2))
    hidden, out = model.layers
    grads = {"W2": out.grads["W"], "b2": out.grads["b"], "W1": hidden.grads["W"],
             "b1": hidden.grads["b"]}
    return a2.copy(), cost, grads, model


# -- 2. and 3. the scalar network ---------------------------------------------------

XS = np.array([-1.0, 1.0])
YS = np.array([1.0, 0.0])
START = dict(w1=2.0, b1=-1.0, w2=1.0, b2=0.0)


def scalar_gradients(x, y, w1, b1, w2, b2):
    """The four closed-form BCE gradients, averaged over the samples."""
    h = sigmoid(w1 * x + b1)
    p = sigmoid(w2 * h + b2)
    e = (p - y) / len(x)
    back = e * w2 * h * (1 - h)
    return {"w1": float((back * x).sum()), "b1": float(back.sum()),
            "w2": float((e * h).sum()), "b2": float(e.sum())}, p


def scalar_model():
    model = rp.Sequential([Dense(1, activation="sigmoid"), Dense(1, activation="sigmoid")],
                          input_shape=(1,), dtype="float64")
    model.set_weights([[[START["w1"]]], [START["b1"]], [[START["w2"]]], [START["b2"]]])
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.parse_args(argv)
    results = {}

    print("1. 2-2-1 sigmoid network, C = 1/2 (a - y)^2, x = (0.05, 0.10), y = 0.01")
    a_hand, cost_hand, delta2, delta1, by_hand = deltas_by_hand()
    a_rp, cost_rp, by_rp, _ = retroprop_221()
    print(f"   output a = {a_hand[0, 0]:.6f} (retroprop {a_rp[0, 0]:.6f}), "
          f"C = {cost_hand:.6f} (retroprop {cost_rp:.6f})")
    print(f"   delta2 = (a - y) a (1 - a) = {delta2[0, 0]:.6f}")
    print(f"   delta1 = (W2 delta2) * a1 (1 - a1) = {np.round(delta1[0], 6).tolist()}")
    print(f"   {'gradient':<10}{'by hand':>48}{'retroprop':>48}")
    worst = 0.0
    for key in ("W1", "b1", "W2", "b2"):
        hand, lib = np.ravel(by_hand[key]), np.ravel(by_rp[key])
        worst = max(worst, float(np.max(np.abs(hand - lib))))
        print(f"   {key:<10}{str(np.round(hand, 8).tolist()):>48}"
              f"{str(np.round(lib, 8).tolist()):>48}")
    print(f"   largest difference: {worst:.1e}")
    results["net221_max_diff"] = worst
    results["net221_delta2"] = float(delta2[0, 0])

    print("\n2. scalar x -> sigmoid -> sigmoid with binary cross-entropy")
    model = scalar_model()
    closed, p0 = scalar_gradients(XS, YS, **START)
    loss = rp.losses.get("binary_crossentropy")
    pred = model.forward(XS.reshape(-1, 1))
    model.backward(loss.gradient(YS, pred))
    lib = {"w1": model.layers[0].grads["W"][0, 0], "b1": model.layers[0].grads["b"][0],
           "w2": model.layers[1].grads["W"][0, 0], "b2": model.layers[1].grads["b"][0]}
    print(f"   {'':<6}{'closed form':>16}{'retroprop':>16}")
    for key in ("w2", "b2", "w1", "b1"):
        print(f"   {key:<6}{closed[key]:>16.10f}{lib[key]:>16.10f}")
    results["scalar_grad_diff"] = max(abs(closed[k] - lib[k]) for k in closed)
    print(f"   largest difference: {results['scalar_grad_diff']:.1e}")

    print("\n3. 500 steps of full-batch gradient descent, lr = 1")
    trainer = rp.Trainer(model, "binary_crossentropy", rp.optim.SGD(lr=1.0), metrics=[])
    trainer.fit(XS.reshape(-1, 1), YS, epochs=500, batch_size=2, shuffle=False, verbose=0)
    after_rp = model.predict(XS.reshape(-1, 1))[:, 0]
    params = dict(START)
    for _ in range(500):
        grads, _ = scalar_gradients(XS, YS, **params)
        for key in params:
            params[key] -= 1.0 * grads[key]
    _, after_np = scalar_gradients(XS, YS, **params)
    results["before"] = p0
    results["after"] = after_rp
    results["train_diff"] = float(np.max(np.abs(after_rp - after_np)))
    print(f"   predictions before: {np.round(p0, 2).tolist()} (targets {YS.tolist()})")
    print(f"   after, retroprop:   {np.round(after_rp, 2).tolist()}  ({after_rp.tolist()})")
    print(f"   after, NumPy loop:  {np.round(after_np, 2).tolist()}  "
          f"(largest difference {results['train_diff']:.1e})")
    return results


if __name__ == "__main__":
    main()
