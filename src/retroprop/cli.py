"""The ``retroprop`` command line: train, evaluate, predict, summary, info.

    retroprop train                      # an MLP on Fashion-MNIST, offline (5 epochs)
    retroprop train --dataset digits --model mlp --epochs 20
    retroprop evaluate model.rpz --dataset fashion-mnist
    retroprop predict model.rpz --input x.npy --output y.npy
    retroprop summary model.rpz
    retroprop info

Errors print one line on stderr and exit with status 2 (bad usage or data)
or 1 (anything else); ``--debug`` shows the traceback instead.
"""
import argparse
import json
import os
import sys
import time

DATASETS = ("fashion-mnist", "mnist", "digits", "xor", "spirals")
MODELS = ("logreg", "mlp", "lenet", "cnn")
OPTIMIZERS = ("sgd", "momentum", "adam")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ---------------------------------------------------------------- data and models

def one_line(message):
    """Fold a multi-line message into one line ("Header: item; item. Next: ...")."""
    out = ""
    for line in str(message).splitlines():
        line = line.strip()
        if not line:
            continue
        is_item = line.startswith("- ")
        line = line[2:] if is_item else line
        if not out:
            out = line
        elif is_item and not out.endswith(":"):
            out += "; " + line
        elif not is_item and not out.endswith((".", ":")):
            out += ". " + line
        else:
            out += " " + line
    return out


def load_dataset(name, data_dir=None, seed=0):
    """(x_train, y_train), (x_test, y_test) for a CLI dataset name."""
    from . import datasets
    if name in ("fashion-mnist", "mnist"):
        loader = datasets.load_fashion_mnist if name == "fashion-mnist" else datasets.load_mnist
        try:
            return loader(data_dir)
        except datasets.DatasetNotFoundError as e:
            # Same message as the library's, in CLI terms and on one line.
            raise CLIError(one_line(str(e).replace("pass data_dir='/path/to/dir'",
                                                   "pass --data-dir DIR"))) from e
    if name == "digits":
        return datasets.load_digits()
    if name == "xor":
        x, y = datasets.make_xor(n=400, noise=0.1, seed=seed)
        xt, yt = datasets.make_xor(n=200, noise=0.1, seed=seed + 1)
        return (x, y), (xt, yt)
    if name == "spirals":
        x, y = datasets.make_spirals(n_samples=600, noise=0.1, seed=seed)
        xt, yt = datasets.make_spirals(n_samples=300, noise=0.1, seed=seed + 1)
        return (x, y), (xt, yt)
    raise CLIError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def build_model(kind, input_shape, n_classes, seed):
    """The preset architectures behind ``--model``."""
    import retroprop as rp
    L = rp.layers
    flat = [L.Flatten()] if len(input_shape) > 1 else []
    if kind == "logreg":
        stack = flat + [L.Dense(n_classes, activation="softmax")]
    elif kind == "mlp":
        if len(input_shape) == 1 and input_shape[0] <= 8:  # toy 2-D problems
            stack = [L.Dense(64, activation="relu"), L.Dense(64, activation="relu"),
                     L.Dense(n_classes, activation="softmax")]
        else:
            stack = flat + [L.Dense(256, activation="relu"), L.Dense(128, activation="relu"),
                            L.Dense(n_classes, activation="softmax")]
    elif kind in ("lenet", "cnn"):
        if not hasattr(L, "Conv2D"):
            raise CLIError(f"--model {kind} needs the convolution layers, which this version "
                           f"does not have yet; use --model mlp or logreg")
        if len(input_shape) != 3:
            raise CLIError(f"--model {kind} needs image data (H, W, C); this dataset has "
                           f"samples of shape {input_shape}")
        if kind == "lenet":
            stack = [L.Conv2D(6, 5, padding="same", activation="relu"), L.MaxPool2D(2),
                     L.Conv2D(16, 5, activation="relu"), L.MaxPool2D(2), L.Flatten(),
                     L.Dense(120, activation="relu"), L.Dense(84, activation="relu"),
                     L.Dense(n_classes, activation="softmax")]
        else:
            stack = [L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPool2D(2),
                     L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPool2D(2),
                     L.Flatten(), L.Dense(128, activation="relu"),
                     L.Dense(n_classes, activation="softmax")]
    else:
        raise CLIError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")
    return rp.Sequential(stack, input_shape=input_shape, seed=seed)


def make_optimizer(name, lr):
    import retroprop as rp
    if name == "sgd":
        return rp.optim.SGD(lr=lr)
    if name == "momentum":
        return rp.optim.SGD(lr=lr, momentum=0.9)
    if name == "adam":
        if not hasattr(rp.optim, "Adam"):
            raise CLIError("--optimizer adam is not available in this version; use sgd or momentum")
        return rp.optim.Adam(lr=lr)
    raise CLIError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 0.001}
# The convolutional presets with momentum: at 0.05 LeNet-5 ends 5 epochs at
# 0.889 test accuracy on Fashion-MNIST, at 0.02 at 0.897 (0.1 diverges).
CONV_MOMENTUM_LR = 0.02
TOY_DATASETS = ("xor", "spirals")


def default_lr(optimizer, model):
    """Learning rate when --lr is not given."""
    if optimizer == "momentum" and model in ("lenet", "cnn"):
        return CONV_MOMENTUM_LR
    return DEFAULT_LR[optimizer]


def training_defaults(dataset, model="mlp"):
    """(epochs, batch size) when not given: small data needs more, smaller steps.

    The convolutional presets take batches of 64: in 5 epochs on Fashion-MNIST
    LeNet-5 reached 0.894 validation accuracy with 64 against 0.890 with 128.
    """
    if dataset in TOY_DATASETS:
        return 100, 16
    return 5, (64 if model in ("lenet", "cnn") else 128)


# ---------------------------------------------------------------- plots

def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CLIError("--plot needs matplotlib: pip install 'retroprop[plot]'") from None
    return plt


def plot_history(history, path):
    plt = _pyplot()
    h = history.history
    epochs = range(1, len(h.get("loss", [])) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            key = prefix + metric
            if key in h:
                ax.plot(list(epochs), h[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(y_true, y_pred, n_classes):
    import numpy as np
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


# ---------------------------------------------------------------- commands

def cmd_train(args):
    import numpy as np
    import retroprop as rp
    if args.threads is not None:
        rp.set_num_threads(args.threads)
    default_epochs, default_batch = training_defaults(args.dataset, args.model)
    args.epochs = args.epochs or default_epochs
    args.batch_size = args.batch_size or default_batch
    (x, y), (xt, yt) = load_dataset(args.dataset, args.data_dir, args.seed)
    n_classes = int(max(y.max(), yt.max())) + 1
    model = build_model(args.model, x.shape[1:], n_classes, args.seed)
    lr = args.lr if args.lr is not None else default_lr(args.optimizer, args.model)
    schedule = lr
    if args.schedule == "cosine":
        # Decay to zero over the whole run: the last epochs take small steps,
        # so the final weights are not left wherever the last noisy large
        # step put them (worth about a point of test accuracy on Fashion-MNIST).
        n_train = len(x) - int(len(x) * args.val_split)
        steps = args.epochs * -(-n_train // args.batch_size)
        schedule = rp.schedules.CosineDecay(lr, decay_steps=steps)
    trainer = rp.Trainer(model, loss="categorical_crossentropy",
                         optimizer=make_optimizer(args.optimizer, schedule), metrics=["accuracy"])
    info = rp.backend_info()
    print(f"retroprop {rp.__version__} | {args.dataset}: {len(x)} train / {len(xt)} test | "
          f"model {args.model} ({model.count_params():,} parameters) | {args.optimizer} lr={lr} "
          f"({args.schedule}) | batch {args.batch_size} | {info['simd']}, {info['threads']} threads")
    start = time.perf_counter()
    history = trainer.fit(x, y, epochs=args.epochs, batch_size=args.batch_size,
                          validation_split=args.val_split, seed=args.seed, verbose=1)
    elapsed = time.perf_counter() - start
    result = trainer.evaluate(xt, yt)
    print(f"test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.4f} "
          f"(trained in {elapsed:.1f} s)")
    if args.out:
        model.save(args.out)
        print(f"saved model to {args.out}")
    if args.plot:
        plot_history(history, args.plot)
        print(f"wrote training curves to {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"history": history.history, "test": result, "seconds": elapsed}, f)
    return 0


def _load(path):
    import retroprop as rp
    return rp.load_model(path)


def cmd_evaluate(args):
    import numpy as np
    import retroprop as rp
    model = _load(args.model)
    _, (xt, yt) = load_dataset(args.dataset, args.data_dir, args.seed)
    expected = tuple(model.input_shape)
    if tuple(xt.shape[1:]) != expected:
        raise CLIError(f"dataset {args.dataset} has samples of shape {tuple(xt.shape[1:])}, "
                       f"the model expects {expected}")
    trainer = rp.Trainer(model, loss="categorical_crossentropy", optimizer=rp.optim.SGD(lr=0.01))
    result = trainer.evaluate(xt, yt)
    pred = np.argmax(model.predict(xt, batch_size=1024), axis=1)
    n_classes = int(model.output_shape[-1])
    matrix = confusion_matrix(yt.astype(np.int64), pred, n_classes)
    print(f"loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    width = max(4, len(str(matrix.max())) + 1)
    print(" " * 4 + "".join(f"{j:>{width}}" for j in range(n_classes)))
    for i in range(n_classes):
        print(f"{i:>3} " + "".join(f"{v:>{width}}" for v in matrix[i]))
    if args.plot:
        plot_confusion(matrix, args.plot)
        print(f"wrote the confusion matrix to {args.plot}")
    return 0


def cmd_predict(args):
    import numpy as np
    model = _load(args.model)
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot read {args.input}: {e}") from None
    if x.ndim == len(model.input_shape):
        x = x[None]
    probs = model.predict(x, batch_size=1024)
    tmp = args.output + ".tmp.npy"
    np.save(tmp, probs, allow_pickle=False)
    os.replace(tmp, args.output)
    print(f"wrote predictions of shape {probs.shape} to {args.output}")
    return 0


def cmd_summary(args):
    _load(args.model).summary()
    return 0


def cmd_info(args):
    import numpy as np
    import retroprop as rp
    info = rp.backend_info()
    print(f"retroprop {rp.__version__}")
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}")
    for key, value in info.items():
        print(f"{key}: {value}")
    return 0


def make_parser():
    parser = argparse.ArgumentParser(prog="retroprop", description="Train and use retroprop models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    # --debug is also accepted after the command ("retroprop train --debug");
    # SUPPRESS keeps the subcommand's default from overwriting the main one.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", parents=[debug], help="train a preset model on a dataset")
    t.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    t.add_argument("--model", choices=MODELS, default="mlp")
    t.add_argument("--epochs", type=int, default=None,
                   help="default: 5 (images), 100 (xor, spirals)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="default: 128 (images; 64 for lenet, cnn), 16 (xor, spirals)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.1 sgd, 0.05 momentum (0.02 for lenet, cnn), 0.001 adam)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="momentum")
    t.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning rate over the run: cosine decay to 0 (default) or constant")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-split", type=float, default=0.1)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--data-dir", default=None, help="directory holding the dataset files")
    t.add_argument("--out", default=None, help="save the trained model here (.rpz)")
    t.add_argument("--plot", default=None, help="write training curves to this PNG")
    t.add_argument("--json", default=None, help="write history and test scores as JSON")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", parents=[debug],
                       help="loss, accuracy and confusion matrix of a saved model")
    e.add_argument("model")
    e.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--plot", default=None, help="write the confusion matrix to this PNG")
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[debug],
                       help="class probabilities for inputs in a .npy file")
    p.add_argument("model")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser("summary", parents=[debug],
                       help="print a saved model's layers and parameter counts")
    s.add_argument("model")
    s.set_defaults(func=cmd_summary)

    i = sub.add_parser("info", parents=[debug], help="version, SIMD level, threads, OpenMP, CUDA")
    i.set_defaults(func=cmd_info)
    return parser


def _validate(args):
    for name in ("epochs", "batch_size", "threads"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "lr", None) is not None and not args.lr > 0:
        raise CLIError(f"--lr must be > 0, got {args.lr}")
    val_split = getattr(args, "val_split", None)
    if val_split is not None and not 0.0 <= val_split < 1.0:
        raise CLIError(f"--val-split must be in [0, 1), got {val_split}")


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _validate(args)
        return args.func(args)
    except KeyboardInterrupt:
        print("retroprop: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for users; the traceback with --debug
        if args.debug:
            raise
        status = 2 if isinstance(e, (CLIError, ValueError, TypeError, OSError)) else 1
        print(f"retroprop: error: {one_line(e) or type(e).__name__}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
