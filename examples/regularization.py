"""Regularization and generalization: overfitting, L2 / L1, dropout (and MC
dropout at inference), early stopping, data augmentation, pruning.

    python examples/regularization.py [--out DIR] [--quick]

A 64-256-256-10 ReLU MLP trained on only 300 of the 8x8 digits (validated on
the other 1497) overfits: the training loss goes to ~0 while the validation
loss turns back up after a few epochs (DIR/overfitting.png). Then, on the
same split and budget:

* L2 (weight decay) and L1 penalties: smaller weights, and with L1 many of
  them exactly 0 or nearly (sparsity);
* Dropout(0.5) after each hidden layer; at inference, MC dropout
  (``rp.mc_predict``) averages 30 stochastic passes, and the spread of
  those passes is larger on the images the model gets wrong;
* EarlyStopping(patience=10, restore_best_weights=True) on the validation
  loss: stops near the validation minimum and keeps those weights;
* augmentation (RandomTranslation + RandomRotation, training only);
* magnitude pruning (``rp.pruning.Pruning``): 90% of the weights removed
  during training, the accuracy kept.

``--quick``: fewer epochs, no figure.
"""
import argparse
import os

import numpy as np

import retroprop as rp
from retroprop import pruning
from retroprop.layers import Dense, Dropout, Flatten, RandomRotation, RandomTranslation


def split(n_train=300, seed=0):
    (x, y), (xt, yt) = rp.datasets.load_digits(test_fraction=0.2, seed=seed)
    images = np.concatenate([x, xt])
    labels = np.concatenate([y, yt])
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])


def mlp(kernel_regularizer=None, dropout=0.0, front=(), seed=0):
    layers = list(front) + [Flatten()]
    for _ in range(2):
        layers.append(Dense(256, activation="relu", kernel_regularizer=kernel_regularizer))
        if dropout:
            layers.append(Dropout(dropout, seed=seed))
    layers.append(Dense(10, activation="softmax"))
    return rp.Sequential(layers, input_shape=(8, 8, 1), seed=seed)


def fit(model, train, val, epochs, callbacks=()):
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.Adam(lr=1e-3),
                         callbacks=list(callbacks))
    history = trainer.fit(*train, epochs=epochs, batch_size=32, validation_data=val, verbose=0)
    return trainer, history.history


def weights(model):
    return np.concatenate([layer.params["W"].ravel() for layer in model.layers
                           if "W" in layer.params])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".", help="directory for overfitting.png")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    epochs = 25 if args.quick else 80
    train, val = split()
    results = {}

    print(f"300 training images, {len(val[0])} validation images, {epochs} epochs, Adam 1e-3\n")
    print(f"{'model':<30}{'train acc':>10}{'val acc':>9}{'best val loss':>15}{'at epoch':>10}"
          f"{'last val loss':>15}{'mean |W|':>10}{'|W|<1e-3':>10}")
    curves = {}

    def report(name, trainer, h, model):
        best = int(np.argmin(h["val_loss"]))
        w = weights(model)
        row = {"train_acc": h["accuracy"][-1], "val_acc": trainer.evaluate(*val)["accuracy"],
               "best_val_loss": h["val_loss"][best], "best_epoch": best + 1,
               "last_val_loss": h["val_loss"][-1], "mean_abs_w": float(np.mean(np.abs(w))),
               "small_w": float(np.mean(np.abs(w) < 1e-3))}
        results[name] = row
        curves[name] = h
        print(f"{name:<30}{row['train_acc']:>10.3f}{row['val_acc']:>9.3f}"
              f"{row['best_val_loss']:>15.4f}{row['best_epoch']:>10}{row['last_val_loss']:>15.4f}"
              f"{row['mean_abs_w']:>10.4f}{row['small_w']:>10.1%}")

    for name, kwargs in (("no regularization", {}),
                         ("L2 1e-3", {"kernel_regularizer": rp.regularizers.L2(1e-3)}),
                         ("L1 1e-4", {"kernel_regularizer": rp.regularizers.L1(1e-4)}),
                         ("dropout 0.5", {"dropout": 0.5})):
        model = mlp(**kwargs)
        trainer, h = fit(model, train, val, epochs)
        report(name, trainer, h, model)
        if name == "dropout 0.5":
            dropout_model = model

    augment = (RandomTranslation(0.15, 0.15, seed=1), RandomRotation(0.04, seed=2))
    model = mlp(front=augment)
    trainer, h = fit(model, train, val, epochs)
    report("augmentation (shift, rotate)", trainer, h, model)

    stop = rp.callbacks.EarlyStopping(monitor="val_loss", patience=10,
                                      restore_best_weights=True)
    model = mlp()
    trainer, h = fit(model, train, val, epochs, callbacks=[stop])
    report("early stopping (patience 10)", trainer, h, model)
    results["early_stopped_epoch"] = None if stop.stopped_epoch is None else stop.stopped_epoch + 1
    results["early_best_epoch"] = None if stop.best_epoch is None else stop.best_epoch + 1
    results["early_restored_val_loss"] = trainer.evaluate(*val)["loss"]
    print(f"   early stopping: stopped after epoch {results['early_stopped_epoch']}, weights of "
          f"epoch {results['early_best_epoch']} restored (val loss "
          f"{results['early_restored_val_loss']:.4f})")

    cb = pruning.Pruning(0.9, begin_epoch=2, end_epoch=max(3, epochs // 2))
    model = mlp()
    trainer, h = fit(model, train, val, epochs, callbacks=[cb])
    report("pruned to 90% sparsity", trainer, h, model)
    results["pruned_sparsity"] = pruning.sparsity(model)["total"]
    print("\n" + pruning.summary(model))

    print("\nMC dropout on the dropout model: 30 stochastic passes averaged")
    xv = val[0].reshape(len(val[0]), -1).reshape(val[0].shape)
    plain = dropout_model.predict(xv)
    mean, std = rp.mc_predict(dropout_model, xv, samples=30, seed=0, return_std=True)
    pred = mean.argmax(axis=1)
    spread = std[np.arange(len(pred)), pred]
    wrong = pred != val[1]
    results["mc_acc"] = float(np.mean(pred == val[1]))
    results["plain_acc"] = float(np.mean(plain.argmax(axis=1) == val[1]))
    results["mc_std_wrong"] = float(spread[wrong].mean())
    results["mc_std_right"] = float(spread[~wrong].mean())
    print(f"   accuracy: dropout off {results['plain_acc']:.3f}, MC average "
          f"{results['mc_acc']:.3f}")
    print(f"   std of the predicted class's probability over the passes: "
          f"{results['mc_std_right']:.3f} on correct images, {results['mc_std_wrong']:.3f} on "
          f"wrong ones")

    if not args.quick:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("\n(matplotlib is not installed: no figure written)")
        else:
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            h = curves["no regularization"]
            axes[0].plot(h["loss"], label="train loss")
            axes[0].plot(h["val_loss"], label="validation loss")
            axes[0].set_title("no regularization: overfitting")
            axes[0].set_xlabel("epoch")
            axes[0].legend()
            for name, hist in curves.items():
                axes[1].plot(hist["val_loss"], label=name)
            axes[1].set_title("validation loss")
            axes[1].set_xlabel("epoch")
            axes[1].set_ylim(0, 1.0)
            axes[1].legend(fontsize="x-small")
            fig.tight_layout()
            os.makedirs(args.out, exist_ok=True)
            results["png"] = os.path.join(args.out, "overfitting.png")
            fig.savefig(results["png"], dpi=80)
            plt.close(fig)
            print(f"\nwrote {results['png']}")
    return results


if __name__ == "__main__":
    main()
