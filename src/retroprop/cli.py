"""The ``retroprop`` command line: train, evaluate, predict, export, summary, info.

    retroprop train                      # an MLP on Fashion-MNIST, offline (5 epochs)
    retroprop train --dataset digits --model mlp --epochs 20
    retroprop evaluate model.rpz --dataset fashion-mnist
    retroprop predict model.rpz --input x.npy --output y.npy
    retroprop export model.rpz model.onnx
    retroprop summary model.rpz
    retroprop info

Errors print one line on stderr and exit with status 2 (bad usage or data, a
file that cannot be read or written, a missing optional package) or 1
(anything else: a bug); ``--debug`` shows the traceback instead. Everything
that can be checked before training is checked before training: output paths,
optional packages, the checkpoint to resume from.
"""
import argparse
import json
import math
import os
import sys
import time

from .callbacks import Callback

DATASETS = ("fashion-mnist", "mnist", "digits", "xor", "spirals")
MODELS = ("logreg", "mlp", "lenet", "cnn")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("cosine", "constant", "exponential", "inverse-time", "step", "polynomial",
             "piecewise")
PLOT_FORMATS = (".png", ".pdf", ".svg")

# Class names of the datasets, for the confusion matrix and the model file.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASS_NAMES = {"fashion-mnist": FASHION_MNIST_CLASSES,
               "mnist": tuple(str(i) for i in range(10)),
               "digits": tuple(str(i) for i in range(10))}
# How each dataset's integer pixels became the float inputs the model was
# trained on (recorded in the model file, so `predict` scales raw images the
# same way): divide by this.
PIXEL_DIVISOR = {"fashion-mnist": 255.0, "mnist": 255.0, "digits": 16.0}


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


def dataset_metadata(name, n_classes):
    """What the model file records about its training data (read back by predict/evaluate)."""
    meta = {"dataset": name,
            "class_names": list(CLASS_NAMES.get(name, [str(i) for i in range(n_classes)]))}
    if name in PIXEL_DIVISOR:
        meta["input_scaling"] = {"integer_inputs_divided_by": PIXEL_DIVISOR[name]}
    return meta


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
    """The optimizer behind ``--optimizer`` (``lr`` a number or a schedule)."""
    import retroprop as rp
    makers = {
        "sgd": lambda: rp.optim.SGD(lr=lr),
        "momentum": lambda: rp.optim.SGD(lr=lr, momentum=0.9),
        "nesterov": lambda: rp.optim.SGD(lr=lr, momentum=0.9, nesterov=True),
        "adam": lambda: rp.optim.Adam(lr=lr),
        "adamw": lambda: rp.optim.AdamW(lr=lr),
        "rmsprop": lambda: rp.optim.RMSprop(lr=lr),
        "adagrad": lambda: rp.optim.Adagrad(lr=lr),
    }
    if name not in makers:
        raise CLIError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return makers[name]()


def make_schedule(name, lr, total_steps):
    """The learning rate over a run of ``total_steps`` optimizer steps (``--schedule``)."""
    import retroprop as rp
    steps = max(1, int(total_steps))
    if name == "constant":
        return lr
    if name == "cosine":
        # Decay to zero over the whole run: the last epochs take small steps,
        # so the final weights are not left wherever the last noisy large
        # step put them (worth about a point of test accuracy on Fashion-MNIST).
        return rp.schedules.CosineDecay(lr, decay_steps=steps)
    if name == "exponential":      # lr / 100 at the end of the run
        return rp.schedules.ExponentialDecay(lr, rate=math.log(100.0) / steps)
    if name == "inverse-time":     # lr / 10 at the end of the run
        return rp.schedules.InverseTimeDecay(lr, rate=9.0 / steps)
    if name == "step":             # lr, lr / 10, lr / 100: one third of the run each
        return rp.schedules.StepDecay(lr, factor=0.1, step=max(1, -(-steps // 3)))
    if name == "polynomial":       # quadratic decay to lr / 100 at the end of the run
        return rp.schedules.PolynomialDecay(lr, decay_steps=steps, end_lr=lr / 100, power=2.0)
    if name == "piecewise":        # lr, then lr / 10 at 60% and lr / 100 at 90% of the run
        return rp.schedules.PiecewiseConstantDecay(
            [max(1, int(0.6 * steps)), max(2, int(0.9 * steps))], [lr, lr / 10, lr / 100])
    raise CLIError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


# Which CLI name builds each schedule class (tests check that every class has one).
SCHEDULE_CLASSES = {"cosine": "CosineDecay", "exponential": "ExponentialDecay",
                    "inverse-time": "InverseTimeDecay", "step": "StepDecay",
                    "polynomial": "PolynomialDecay", "piecewise": "PiecewiseConstantDecay"}

DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 0.001, "adamw": 0.001,
              "rmsprop": 0.001, "adagrad": 0.01}
# The convolutional presets with momentum: at 0.05 LeNet-5 ends 5 epochs at
# 0.889 test accuracy on Fashion-MNIST, at 0.02 at 0.897 (0.1 diverges).
CONV_MOMENTUM_LR = 0.02
TOY_DATASETS = ("xor", "spirals")


def default_lr(optimizer, model):
    """Learning rate when --lr is not given."""
    if optimizer in ("momentum", "nesterov") and model in ("lenet", "cnn"):
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


# ---------------------------------------------------------------- checks before work

def check_output_path(path, option):
    """Raise CLIError unless ``path`` can be written: its directory exists and
    is writable, and it does not name a directory."""
    path = os.fspath(path)
    if not path:
        raise CLIError(f"{option}: empty file name")
    if os.path.isdir(path):
        raise CLIError(f"{option} {path}: is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CLIError(f"{option} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CLIError(f"{option} {path}: directory {directory} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"{option} {path}: file exists and is not writable")
    return path


def plot_path(path):
    """The file --plot writes: ``X`` becomes ``X.png``; .png, .pdf and .svg are kept."""
    root, ext = os.path.splitext(path)
    if not ext:
        return path + ".png"
    if ext.lower() not in PLOT_FORMATS:
        raise CLIError(f"--plot {path}: unsupported format {ext!r}; use "
                       f"{', '.join(PLOT_FORMATS)} (or no extension for .png)")
    return path


# ---------------------------------------------------------------- plots

def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CLIError("--plot needs matplotlib: pip install 'retroprop[plot]'") from None
    return plt


def plot_history(history, path, title=None):
    """Loss and accuracy per epoch (training and validation), one panel each."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    h = history.history
    epochs = list(range(1, len(h.get("loss", [])) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style, label in (("", "-o", "training"), ("val_", "--s", "validation")):
            key = prefix + metric
            if key in h:
                ax.plot(epochs, h[key], style, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix, path, class_names=None, title=None):
    """The confusion matrix, every class labelled on both axes."""
    plt = _pyplot()
    n = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix")
    for i in range(n):
        for j in range(n):
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

def _load(path, with_extra=False):
    import retroprop as rp
    if not with_extra:
        return rp.load_model(path)
    model, _, extra = rp.load_model(path, return_optimizer=True)
    return model, extra


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _training_callbacks(args, metadata):
    """The callbacks the options ask for (--checkpoint, --early-stopping, --csv)."""
    import retroprop as rp
    callbacks = []
    if args.checkpoint:
        callbacks.append(CheckpointEveryEpoch(args.checkpoint, metadata))
    if args.early_stopping is not None:
        callbacks.append(rp.callbacks.EarlyStopping(monitor="val_loss",
                                                    patience=args.early_stopping,
                                                    restore_best_weights=True))
    if args.csv:
        callbacks.append(rp.callbacks.CSVLogger(args.csv))
    return callbacks


class CheckpointEveryEpoch(Callback):
    """Save model, optimizer state, the epoch reached and the dataset metadata each epoch
    (what ``--resume`` reads)."""

    def __init__(self, path, metadata):
        super().__init__()
        self.path = path
        self.metadata = dict(metadata)

    def on_epoch_end(self, epoch, logs=None):
        self.model.save(self.path, optimizer=self.trainer.optimizer,
                        extra=dict(self.metadata, epoch=epoch + 1))


def _check_train_args(args):
    """Everything that can fail after training, checked before it."""
    for option, value in (("--out", args.out), ("--json", args.json), ("--csv", args.csv),
                          ("--checkpoint", args.checkpoint)):
        if value:
            check_output_path(value, option)
    if args.plot:
        args.plot = check_output_path(plot_path(args.plot), "--plot")
        _pyplot()
    if args.early_stopping is not None and args.val_split == 0:
        raise CLIError("--early-stopping watches the validation loss: give --val-split > 0")
    if args.resume:
        given = [opt for opt, value in (("--model", args.model), ("--optimizer", args.optimizer),
                                        ("--lr", args.lr), ("--schedule", args.schedule))
                 if value is not None]
        if given:
            raise CLIError(f"--resume takes the model, optimizer and learning-rate schedule "
                           f"from the checkpoint; drop {', '.join(given)}")


def cmd_train(args):
    import numpy as np
    import retroprop as rp
    _check_train_args(args)
    resumed = None
    if args.resume:
        model, optimizer, extra = rp.load_model(args.resume, return_optimizer=True)
        if optimizer is None or "epoch" not in extra:
            raise CLIError(f"--resume {args.resume}: not a checkpoint (no optimizer state or "
                           f"epoch); write one with --checkpoint")
        if extra.get("dataset", args.dataset) != args.dataset:
            raise CLIError(f"--resume {args.resume}: trained on {extra['dataset']}, not "
                           f"{args.dataset}; add --dataset {extra['dataset']}")
        resumed = (model, optimizer, int(extra["epoch"]))
    args.model = args.model or "mlp"
    args.optimizer = args.optimizer or "momentum"
    args.schedule = args.schedule or "cosine"
    if args.threads is not None:
        rp.set_num_threads(args.threads)
    default_epochs, default_batch = training_defaults(args.dataset, args.model)
    args.epochs = args.epochs or default_epochs
    args.batch_size = args.batch_size or default_batch
    (x, y), (xt, yt) = load_dataset(args.dataset, args.data_dir, args.seed)
    n_classes = int(max(y.max(), yt.max())) + 1
    metadata = dataset_metadata(args.dataset, n_classes)
    n_val = int(len(x) * args.val_split)
    n_train = len(x) - n_val
    if resumed is not None:
        model, optimizer, initial_epoch = resumed
        if tuple(model.input_shape) != tuple(x.shape[1:]):
            raise CLIError(f"--resume {args.resume}: the model takes samples of shape "
                           f"{tuple(model.input_shape)}, {args.dataset} has {tuple(x.shape[1:])}")
        if initial_epoch >= args.epochs:
            raise CLIError(f"--resume {args.resume}: the checkpoint has {initial_epoch} epochs "
                           f"done; --epochs is the total to reach, give more than that")
        what = f"resumed from {args.resume} at epoch {initial_epoch}"
        decay_steps = getattr(optimizer.lr, "decay_steps", None)
        steps = args.epochs * -(-n_train // args.batch_size)
        if decay_steps is not None and decay_steps < steps and not args.quiet:
            print(f"note: the checkpoint's learning-rate schedule ends after {decay_steps} "
                  f"steps; the steps after that (up to {steps}) keep its final rate")
    else:
        model = build_model(args.model, x.shape[1:], n_classes, args.seed)
        lr = args.lr if args.lr is not None else default_lr(args.optimizer, args.model)
        steps = args.epochs * -(-n_train // args.batch_size)
        optimizer = make_optimizer(args.optimizer, make_schedule(args.schedule, lr, steps))
        initial_epoch = 0
        what = (f"model {args.model} ({model.count_params():,} parameters) | "
                f"{args.optimizer} lr={lr} ({args.schedule})")
    trainer = rp.Trainer(model, loss="categorical_crossentropy", optimizer=optimizer,
                         metrics=["accuracy"], callbacks=_training_callbacks(args, metadata))
    info = rp.backend_info()
    if not args.quiet:
        print(f"retroprop {rp.__version__} | {args.dataset}: {n_train} train + {n_val} "
              f"validation / {len(xt)} test | {what} | batch {args.batch_size} | "
              f"{info['simd']}, {info['threads']} threads")
    start = time.perf_counter()
    history = trainer.fit(x, y, epochs=args.epochs, batch_size=args.batch_size,
                          validation_split=args.val_split, seed=args.seed,
                          verbose=0 if args.quiet else 1, initial_epoch=initial_epoch)
    elapsed = time.perf_counter() - start
    result = trainer.evaluate(xt, yt)
    print(f"test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.4f} "
          f"(trained in {elapsed:.1f} s)")
    say = (lambda message: None) if args.quiet else print
    if args.out:
        model.save(args.out, extra=metadata)
        say(f"saved model to {args.out}")
    if args.json:
        _write_json(args.json, {"history": history.history, "test": result, "seconds": elapsed})
        say(f"wrote history and test scores to {args.json}")
    if args.csv:
        say(f"wrote the per-epoch log to {args.csv}")
    if args.checkpoint:
        say(f"checkpoint (resume with --resume {args.checkpoint}): {args.checkpoint}")
    if args.plot:
        plot_history(history, args.plot, title=f"{args.model} on {args.dataset}"
                     if resumed is None else f"{model.name} on {args.dataset}")
        say(f"wrote training curves to {args.plot}")
    return 0


def cmd_evaluate(args):
    import numpy as np
    import retroprop as rp
    if args.plot:
        args.plot = check_output_path(plot_path(args.plot), "--plot")
        _pyplot()
    model, extra = _load(args.model, with_extra=True)
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
    names = extra.get("class_names") or CLASS_NAMES.get(args.dataset)
    if names is None or len(names) != n_classes:
        names = [str(i) for i in range(n_classes)]
    print(f"loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    width = max(4, len(str(matrix.max())) + 1)
    label = max(len(n) for n in names) + 1
    print(" " * label + "".join(f"{j:>{width}}" for j in range(n_classes)))
    for i in range(n_classes):
        print(f"{names[i]:<{label}}" + "".join(f"{v:>{width}}" for v in matrix[i]))
    if any(name != str(i) for i, name in enumerate(names)):
        print("columns: " + ", ".join(f"{i} {name}" for i, name in enumerate(names)))
    if args.plot:
        plot_confusion(matrix, args.plot, names,
                       title=f"{model.name} on {args.dataset}: accuracy "
                             f"{result['accuracy']:.4f}")
        print(f"wrote the confusion matrix to {args.plot}")
    return 0


def read_inputs(path, key=None):
    """The array in a .npy, .npz (``key``: which array) or .csv file (one sample per row)."""
    import numpy as np
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise CLIError(f"--input {path}: no such file")
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if key is None:
                    if len(keys) != 1:
                        raise CLIError(f"--input {path} holds {len(keys)} arrays "
                                       f"({', '.join(keys)}); choose one with --key")
                    key = keys[0]
                if key not in keys:
                    raise CLIError(f"--input {path} has no array {key!r}; it has "
                                   f"{', '.join(keys)}")
                return archive[key]
        if key is not None:
            raise CLIError("--key selects an array of a .npz input")
        if ext == ".csv":
            try:
                return np.loadtxt(path, delimiter=",", ndmin=2)
            except ValueError:    # a header line
                return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot read {path}: {e}") from None


def prepare_inputs(x, model, extra):
    """Inputs shaped and scaled for the model, or CLIError saying what is wrong."""
    import numpy as np
    shape = tuple(model.input_shape)
    if x.dtype.kind not in "biuf" or x.dtype.kind == "b":
        raise CLIError(f"input must be numbers, got dtype {x.dtype}")
    if x.shape == shape:                       # one sample
        x = x[None]
    elif x.shape[1:] + (1,) == shape:          # (N, 28, 28) for a (28, 28, 1) model
        x = x[..., None]
    elif x.ndim == 2 and len(shape) > 1 and x.shape[1] == int(np.prod(shape)):
        x = x.reshape((-1,) + shape)           # flattened rows (a CSV file)
    if x.shape[1:] != shape:
        raise CLIError(f"the model expects input of shape (N, {', '.join(map(str, shape))}), "
                       f"got {x.shape}")
    if x.dtype.kind in "iu":
        scaling = (extra.get("input_scaling") or {}).get("integer_inputs_divided_by")
        if scaling is None:
            raise CLIError(f"input has integer dtype {x.dtype}, but the model file does not "
                           f"record how its training inputs were scaled; give float input "
                           f"scaled as the training data was")
        x = x.astype(np.float32) / np.float32(scaling)
    else:
        bad = ~np.isfinite(x)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise CLIError(f"input contains {x[index]} at index {index}; NaN and infinite "
                           f"inputs cannot be predicted")
    return x


def cmd_predict(args):
    import numpy as np
    check_output_path(args.output, "--output")
    model, extra = _load(args.model, with_extra=True)
    x = prepare_inputs(read_inputs(args.input, args.key), model, extra)
    probs = model.predict(x, batch_size=1024)
    tmp = args.output + ".tmp.npy"
    np.save(tmp, probs, allow_pickle=False)
    os.replace(tmp, args.output)
    print(f"wrote predictions of shape {probs.shape} to {args.output}")
    return 0


def cmd_export(args):
    from .interop import to_onnx
    check_output_path(args.output, "export OUTPUT")
    model = _load(args.model)
    to_onnx(model, args.output, opset=args.opset)
    print(f"wrote {args.output} (ONNX opset {args.opset}, input 'input' of shape "
          f"(N, {', '.join(map(str, model.input_shape))}), output 'output')")
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" for options with a fixed default; those whose default
    depends on other options say so in their own help (their default is None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def make_parser():
    from . import __version__
    parser = argparse.ArgumentParser(prog="retroprop",
                                     description="Train and use retroprop models.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"retroprop {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    # --debug is also accepted after the command ("retroprop train --debug");
    # SUPPRESS keeps the subcommand's default from overwriting the main one.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, **kwargs):
        return sub.add_parser(name, parents=[debug], formatter_class=_HelpFormatter, **kwargs)

    t = command("train", help="train a preset model on a dataset")
    t.add_argument("--dataset", choices=DATASETS, default="fashion-mnist",
                   help="training and test data")
    t.add_argument("--model", choices=MODELS, default=None, help="architecture (default: mlp)")
    t.add_argument("--epochs", type=int, default=None,
                   help="epochs to train (with --resume: the total to reach) (default: 5 for "
                        "images, 100 for xor and spirals)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="default: 128 for images (64 for lenet, cnn), 16 for xor and spirals")
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 0.1 sgd, 0.05 momentum and nesterov (0.02 for "
                        "lenet, cnn), 0.001 adam, adamw, rmsprop, 0.01 adagrad)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="momentum and nesterov: SGD with momentum 0.9 (default: momentum)")
    t.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="learning rate over the run: cosine decay to 0, constant, exponential "
                        "(to lr/100), inverse-time (to lr/10), step (x0.1 after each third) "
                        "(default: cosine)")
    t.add_argument("--seed", type=int, default=0, help="weights, shuffling and toy data")
    t.add_argument("--val-split", type=float, default=0.1,
                   help="fraction of the training set held out for validation (the last samples)")
    t.add_argument("--threads", type=int, default=None,
                   help="threads of the C kernels (default: OMP_NUM_THREADS, else all cores)")
    t.add_argument("--data-dir", default=None, help="directory holding the dataset files")
    t.add_argument("--out", default=None, help="save the trained model here (.rpz)")
    t.add_argument("--plot", default=None,
                   help="write loss and accuracy curves to this file (.png added when it has "
                        "no extension; .pdf, .svg also work)")
    t.add_argument("--json", default=None, help="write history and test scores as JSON")
    t.add_argument("--csv", default=None, metavar="LOG",
                   help="write one CSV row of losses and accuracies per epoch")
    t.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="save model and optimizer state here after every epoch")
    t.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue the run saved by --checkpoint (its model, optimizer, "
                        "schedule and epoch count)")
    t.add_argument("--early-stopping", type=int, default=None, metavar="N",
                   help="stop when the validation loss has not improved for N epochs and keep "
                        "the best weights")
    t.add_argument("--quiet", action="store_true",
                   help="print only the test result line (and errors)")
    t.set_defaults(func=cmd_train)

    e = command("evaluate", help="loss, accuracy and confusion matrix of a saved model")
    e.add_argument("model")
    e.add_argument("--dataset", choices=DATASETS, default="fashion-mnist",
                   help="evaluated on its test set")
    e.add_argument("--data-dir", default=None, help="directory holding the dataset files")
    e.add_argument("--seed", type=int, default=0, help="toy data (xor, spirals)")
    e.add_argument("--plot", default=None,
                   help="write the confusion matrix to this file (.png added when it has no "
                        "extension)")
    e.set_defaults(func=cmd_evaluate)

    p = command("predict", help="class probabilities for inputs in a .npy, .npz or .csv file")
    p.add_argument("model")
    p.add_argument("--input", required=True,
                   help=".npy, .npz (see --key) or .csv (one flattened sample per row); "
                        "(N, H, W) images are given their channel axis; integer pixels are "
                        "scaled as the training data was")
    p.add_argument("--key", default=None, help="the array of a .npz input to use")
    p.add_argument("--output", required=True, help="where to write the predictions (.npy)")
    p.set_defaults(func=cmd_predict)

    x = command("export", help="write a saved model as ONNX (needs: pip install 'retroprop[onnx]')")
    x.add_argument("model", help="the .rpz model file")
    x.add_argument("output", help="the .onnx file to write")
    x.add_argument("--opset", type=int, default=17, help="ONNX operator set version")
    x.set_defaults(func=cmd_export)

    s = command("summary", help="print a saved model's layers and parameter counts")
    s.add_argument("model")
    s.set_defaults(func=cmd_summary)

    i = command("info", help="version, SIMD level, threads, OpenMP, CUDA")
    i.set_defaults(func=cmd_info)
    return parser


def _validate(args):
    for name in ("epochs", "batch_size", "threads"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "lr", None) is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        raise CLIError(f"--lr must be > 0, got {args.lr}")
    val_split = getattr(args, "val_split", None)
    if val_split is not None and not 0.0 <= val_split < 1.0:
        raise CLIError(f"--val-split must be in [0, 1), got {val_split}")
    patience = getattr(args, "early_stopping", None)
    if patience is not None and patience < 1:
        raise CLIError(f"--early-stopping must be >= 1 epoch, got {patience}")


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
        # User errors (bad options or data, files, missing optional packages,
        # a run that diverged) exit with 2; anything else is a bug: 1.
        user = (CLIError, ValueError, TypeError, OSError, ImportError, FloatingPointError)
        status = 2 if isinstance(e, user) else 1
        print(f"retroprop: error: {one_line(e) or type(e).__name__}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
