"""A training step in one backend call, for the plainest models.

A model made only of :class:`~retroprop.layers.Dense` layers, whose hidden
activations the dense kernels fuse and whose last layer is a softmax trained
with categorical cross-entropy (the MLP of every course), spends a
noticeable part of a step in Python between its kernels: at batch 128 of a
784-256-128-10 MLP, about 40 us of a ~1.05 ms step. For such a model the
Trainer hands the whole step to the backend's ``dense_stack_step`` (when the
backend has one): forward, loss, backward and the optimizer update in one C
call, with the GIL released throughout. Likewise ``Sequential.forward`` of a
Dense-only model (any fused last activation, or softmax) is one
``dense_stack_forward`` call: single-sample inference of that MLP takes ~16
us instead of ~20.

It runs the kernels the layer-by-layer step runs, in the same order, on the
same parameter, gradient and optimizer-state arrays, so the weights after
any number of steps are identical to those of the layer-by-layer path
(tests/test_stack_step.py checks this bit for bit). Everything a step could
see changing is checked before each step: the parameter and gradient arrays
of every layer, its activation, name, trainability and regularizers, and the
optimizer's state; any change rebuilds the plan or, when the model no longer
qualifies, falls back to the layer-by-layer step.
"""
import numpy as np

from . import aligned
from .layers.dense import Dense
from .losses import CategoricalCrossentropy


def _layer_signature(layer):
    """What a training plan assumes about one layer, compared every step."""
    return (layer.params.get("W"), layer.params.get("b"), layer.grads.get("W"),
            layer.grads.get("b"), layer.activation, layer.name, layer.trainable,
            layer.kernel_regularizer, layer.bias_regularizer, layer.activation.param)


def _leave_layers_as_forward(layers, x, outputs, top_logits):
    """Each Dense layer's last input, output and logits, as its own forward
    leaves them (Dense.backward reads them): logits are the output for a
    linear layer, None for the other fused activations, and ``top_logits``
    for a softmax last layer."""
    last = len(outputs) - 1
    for i, (layer, out) in enumerate(zip(layers, outputs)):
        layer._x = x
        layer._y = out
        if i == last and top_logits is not None:
            layer.logits = top_logits
        else:
            layer.logits = out if layer.activation.name == "linear" else None
        x = out


def qualifies(model, loss, backend):
    """Whether the whole step of ``model`` trained with ``loss`` can run as one
    ``dense_stack_step`` call of ``backend``."""
    layers = getattr(model, "layers", None)
    if not layers or not hasattr(backend, "dense_stack_step"):
        return False
    if type(loss) is not CategoricalCrossentropy or loss.from_logits:
        return False
    if np.dtype(model.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        return False
    for i, layer in enumerate(layers):
        if type(layer) is not Dense or not layer.built:
            return False
        if layer.kernel_regularizer is not None or layer.bias_regularizer is not None:
            return False
        act = layer.activation
        if i == len(layers) - 1:
            if act.name != "softmax":
                return False
        elif not act.fusable or act.name not in backend.FUSED_ACTIVATIONS:
            return False
    return True


class DenseStackPlan:
    """The arrays of one model's step at one batch size, and the step itself."""

    def __init__(self, model, optimizer, backend, batch):
        self.model = model
        self.optimizer = optimizer
        self.backend = backend
        self.batch = batch
        layers = model.layers
        dtype = model.dtype
        self.signatures = [_layer_signature(layer) for layer in layers]
        # The optimizer's (key, param, grad) list, kept so that its own lists
        # are reused step after step (Optimizer._step_lists).
        self.items = list(model.named_parameters())
        self.outputs = [aligned.empty((batch, layer.units), dtype) for layer in layers]
        dzs = [aligned.empty((batch, layer.units), dtype) for layer in layers]
        dxs = [None] + [aligned.empty((batch, layer.input_shape[0]), dtype)
                        for layer in layers[1:]]
        self.logits = aligned.empty((batch, layers[-1].units), dtype)
        self.stack = backend.dense_stack(
            [layer.params["W"] for layer in layers],
            [layer.params.get("b") for layer in layers],
            [layer.activation.name for layer in layers],
            [layer.activation.param for layer in layers],
            self.outputs, self.logits,
            dweights=[layer.grads["W"] for layer in layers],
            dbiases=[layer.grads.get("b") for layer in layers], dzs=dzs, dxs=dxs)

    def still_valid(self):
        """True while every layer and the parameter list are what the plan was built on."""
        for layer, expected in zip(self.model.layers, self.signatures):
            params, grads = layer.params, layer.grads
            if (params.get("W") is not expected[0] or params.get("b") is not expected[1]
                    or grads.get("W") is not expected[2] or grads.get("b") is not expected[3]
                    or layer.activation is not expected[4] or layer.name != expected[5]
                    or layer.trainable is not expected[6]
                    or layer.kernel_regularizer is not expected[7]
                    or layer.bias_regularizer is not expected[8]
                    or layer.activation.param != expected[9]):
                return False
        return len(self.model.layers) == len(self.signatures)

    def step(self, xb, targets, mode, next_batch=None, bounds=None):
        """One step; returns (status, loss, refused key or None), status as in
        the backend's ``dense_stack_step``. Leaves every layer as its forward and
        backward would (last input, output and logits). ``next_batch``: a
        ``(data, index, out)`` gather done during the step; ``bounds``: the
        optimizer's bounds kept between steps (both the backend's)."""
        opt = self.optimizer
        keys, params, grads, state0, state1 = opt._step_lists(self.items)
        # A clipping optimizer must see the gradients before its update: the
        # call then only computes them ("check" writes no weight), and the
        # optimizer clips and steps on its own.
        clipping = getattr(opt, "clips_gradients", False)
        status, loss, first_bad = self.backend.dense_stack_step(
            self.stack, xb, targets, opt.rule, params, grads, state0, state1,
            lr=opt.current_lr(), mode="check" if clipping else mode, next_batch=next_batch,
            bounds=bounds, **opt.step_hyperparameters())
        _leave_layers_as_forward(self.model.layers, xb, self.outputs, self.logits)
        if clipping and status != 1:
            bad_key = opt._run(self.items, mode)
            return (0 if bad_key is None else 2), loss, bad_key
        bad_key = None
        if status == 2:
            bad_key = keys[first_bad]
        elif status == 0:
            opt._finish_step(keys, -1, mode)
        return status, loss, bad_key


# ---------------------------------------------------------------- forward only

def forward_qualifies(model, backend):
    """Whether ``model.forward`` can run as one ``dense_stack_forward`` call."""
    layers = model.layers
    if not layers or not hasattr(backend, "dense_stack_forward"):
        return False
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        if type(layer) is not Dense or not layer.built:
            return False
        act = layer.activation
        if not (act.fusable and act.name in backend.FUSED_ACTIVATIONS) and not (
                i == last and act.name == "softmax"):
            return False
    return True


class DenseForwardPlan:
    """A Dense-only model's forward pass at one batch size, in one backend call."""

    def __init__(self, model, backend, batch):
        self.model = model
        self.backend = backend
        layers = model.layers
        dtype = model.dtype
        self.signatures = [(layer.params.get("W"), layer.params.get("b"), layer.activation,
                            layer.activation.param) for layer in layers]
        self.outputs = [aligned.empty((batch, layer.units), dtype) for layer in layers]
        softmax = layers[-1].activation.name == "softmax"
        self.logits = aligned.empty((batch, layers[-1].units), dtype) if softmax else None
        self.n_in = layers[0].input_shape[0]
        self.stack = backend.dense_stack(
            [layer.params["W"] for layer in layers],
            [layer.params.get("b") for layer in layers],
            [layer.activation.name for layer in layers],
            [layer.activation.param for layer in layers],
            self.outputs, self.logits)

    def still_valid(self):
        layers = self.model.layers
        if len(layers) != len(self.signatures):
            return False
        for layer, (w, b, act, param) in zip(layers, self.signatures):
            params = layer.params
            if (params.get("W") is not w or params.get("b") is not b
                    or layer.activation is not act or act.param != param):
                return False
        return True

    def forward(self, x):
        """The model's output for x; every layer left as its own forward leaves it."""
        y = self.backend.dense_stack_forward(self.stack, x)
        _leave_layers_as_forward(self.model.layers, x, self.outputs, self.logits)
        return y
