"""Fully connected layer: y = act(x @ W + b), W of shape (in, out)."""
import numpy as np

from .. import activations, initializers, regularizers
from .base import BufferCache, Layer


def _spec_name(spec):
    """Config value for an initializer: a name, or an Initializer's class and config."""
    return initializers.serialize(spec)


class Dense(Layer):
    """Dense (fully connected) layer.

    Parameters
    ----------
    units : int
        Number of outputs.
    activation : str, Activation or None
        Applied to x @ W + b. Activations whose derivative comes from the
        output (linear, relu, sigmoid with any slope, tanh, step, leaky_relu,
        elu: ``activation.fusable``) run fused inside the backend's
        ``dense_forward``/``dense_backward``, in the GEMM write-back; the
        others (arctan, softplus, gelu, swish, softmax) are applied by the
        elementwise kernel after a linear ``dense_forward`` whose result is
        kept as ``self.logits`` for their backward.
    use_bias : bool
    kernel_initializer, bias_initializer : str or callable(shape, rng, dtype)
    kernel_regularizer, bias_regularizer : Regularizer or None
        Penalties added to the model's loss and to ``grads`` in backward.
    name : str or None
        Assigned by the model ("dense", "dense_1", ...) when None.
    """

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, name=None):
        super().__init__(name=name)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"Dense units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        # Resolve now so a bad name fails at construction, not at build.
        self._kernel_init = initializers.get(kernel_initializer)
        self._bias_init = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self._buffers = BufferCache()
        self._x = None        # input of the last forward (a reference, not a copy)
        self._y = None        # output of the last forward
        self.logits = None    # pre-activation of the last forward (non-fused activations)

    # -- building -------------------------------------------------------------

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(
                f"{self._describe()} expects input of shape (N, features), got per-sample "
                f"shape {tuple(input_shape)}; add a Flatten layer before it")
        return (self.units,)

    def build(self, input_shape, dtype, rng, backend=None):
        """Create W (in, units) and b (units,), as in y = act(x @ W + b)."""
        output_shape = super().build(input_shape, dtype, rng, backend)
        fan_in = self.input_shape[0]
        self.add_param("W", self._kernel_init((fan_in, self.units), rng, self.dtype))
        if self.use_bias:
            self.add_param("b", self._bias_init((self.units,), rng, self.dtype))
        self._buffers.clear()
        return output_shape

    # -- forward / backward ---------------------------------------------------

    @property
    def _bias(self):
        return self.params["b"] if self.use_bias else None

    def forward(self, x, training=False):
        """act(x @ W + b) for x of shape (N, in); returns a reused buffer."""
        self.check_input(x)
        n = x.shape[0]
        out = self._buffers.get("out", (n, self.units), self.dtype)
        kernel = self.params["W"]
        if self.activation.fusable:
            self.backend.dense_forward(x, kernel, self._bias, self.activation.name, out=out,
                                       param=self.activation.param)
            self.logits = out if self.activation.name == "linear" else None
        elif self.activation.name == "softmax":
            # One call for the GEMM and the row softmax; the logits are kept
            # for the fused softmax + cross-entropy gradient.
            logits = self._buffers.get("logits", (n, self.units), self.dtype)
            self.backend.dense_forward(x, kernel, self._bias, "softmax", out=out, logits=logits)
            self.logits = logits
        else:
            logits = self._buffers.get("logits", (n, self.units), self.dtype)
            self.backend.dense_forward(x, kernel, self._bias, "linear", out=logits)
            self.activation.forward(logits, self.backend, out=out)
            self.logits = logits
        self._x = x
        self._y = out
        return out

    def backward(self, dy, need_dx=True):
        """Write dL/dW, dL/db into ``grads`` (overwriting) and return dL/dx."""
        self._check_backward_ready()
        self.check_output_grad(dy, self._x.shape[0])
        if self.activation.fusable:
            return self._dense_backward(self._y, dy, self.activation.name, need_dx,
                                        self.activation.param)
        dz = self._buffers.get("dz", dy.shape, self.dtype)
        self.activation.backward(self._y, dy, self.backend, x=self.logits, out=dz)
        return self._dense_backward(self.logits, dz, "linear", need_dx)

    def backward_from_logits(self, dz, need_dx=True):
        """Backward given dL/dz for the pre-activation z = x @ W + b.

        Used by the Trainer's fused softmax + cross-entropy path, where the
        gradient w.r.t. the logits comes straight from the loss.
        """
        self._check_backward_ready()
        self.check_output_grad(dz, self._x.shape[0])
        logits = self.logits if self.logits is not None else self._y
        return self._dense_backward(logits, dz, "linear", need_dx)

    def _check_backward_ready(self):
        if self._x is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")

    def _dense_backward(self, y, dz, activation, need_dx, param=None):
        dx = self._buffers.get("dx", self._x.shape, self.dtype) if need_dx else None
        db = self.grads["b"] if self.use_bias else None
        self.backend.dense_backward(self._x, self.params["W"], y, dz, activation,
                                    self.grads["W"], db=db, dx=dx, param=param)
        self.add_regularization_gradients()
        return dx

    # -- config -----------------------------------------------------------------

    def get_config(self):
        def reg(r):
            return None if r is None else r.serialize()
        return {
            "units": self.units,
            "activation": self.activation.get_config(),
            "use_bias": self.use_bias,
            "kernel_initializer": _spec_name(self.kernel_initializer),
            "bias_initializer": _spec_name(self.bias_initializer),
            "kernel_regularizer": reg(self.kernel_regularizer),
            "bias_regularizer": reg(self.bias_regularizer),
            "name": self.name,
        }
