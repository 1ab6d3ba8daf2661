"""retroprop: a neural-network training library with C kernels.

    import retroprop as rp
    model = rp.Sequential([rp.layers.Dense(64, activation="relu"),
                           rp.layers.Dense(10, activation="softmax")],
                          input_shape=(784,), seed=0)
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.05, momentum=0.9))
    history = trainer.fit(x, y, epochs=5, batch_size=64, validation_split=0.1)

Any graph: ``x = rp.Input((784,))``, layers called on symbolic tensors,
``rp.Model(inputs, outputs)``; ``rp.grad`` differentiates any of it
(docs/GRAPH.md).
"""
import importlib

from . import (activations, callbacks, initializers, layers, losses, metrics, optim,
               regularizers, schedules)
from . import ops
from .backend import backend_info, get_num_threads, set_num_threads
from .callbacks import History
from .gradcheck import check_layer_gradients, gradcheck
from . import pruning  # noqa: E402  (the course's tools: pruning, minimize, MC dropout)
from .mc_dropout import mc_predict  # noqa: E402
from .minimize import minimize  # noqa: E402
from .graph import Input, SymbolicTensor
from .model import Model, Sequential, grad
from .trainer import NonFiniteError, Trainer

__version__ = "0.1.0"

__all__ = [
    "Model", "Sequential", "Input", "SymbolicTensor", "grad", "ops", "Trainer", "History", "NonFiniteError", "gradcheck", "check_layer_gradients",
    "layers", "activations", "losses", "optim", "initializers", "regularizers", "callbacks",
    "metrics", "schedules", "datasets", "io", "interop", "load_model", "save_model",
    "set_num_threads", "get_num_threads", "backend_info",
    "pruning", "mc_predict", "minimize",
    "__version__",
]

# Imported on first use: datasets and interop may pull optional dependencies,
# and io is written separately.
_LAZY_MODULES = ("datasets", "io", "interop")


def __getattr__(name):
    if name in _LAZY_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    if name in ("load_model", "save_model"):
        return getattr(importlib.import_module(".io", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
