"""SimpleRNN: the course's recurrent cell, with backpropagation through time.

For an input sequence x_1 .. x_T (per-sample shape (T, features))::

    h_0 = 0
    z_t = x_t W + h_{t-1} U + b
    h_t = act(z_t)                 (tanh by default)

The output is h_T, shape (units,), or the whole sequence h_1 .. h_T, shape
(T, units), with ``return_sequences=True``. Parameters: ``W`` (features,
units), ``U`` (units, units) the recurrent kernel, ``b`` (units,).

Backpropagation through time walks the steps backwards, carrying
dL/dh_{t-1} = dz_t U^T into the step before::

    dh_t = dL/dh_t (from the output, if it is part of it) + dz_{t+1} U^T
    dz_t = dh_t * act'(z_t)
    dW = sum_t x_t^T dz_t,  dU = sum_t h_{t-1}^T dz_t,  db = sum_t dz_t,
    dx_t = dz_t W^T

Because every step multiplies the carried gradient by U^T and act', its
size changes geometrically with T: it vanishes when the largest singular
value of U times act' stays below 1 and explodes above 1 (the course's
exploding gradients; clip them with the optimizers' ``clipnorm``).

Everything runs on the backend: the input projection of all steps is one
``dense_forward`` over the (T * N, features) matrix, each step's recurrent
product a ``gemm`` accumulated into it, the activation the elementwise
kernel; backward uses the same calls transposed. The data are kept
time-major, (T, N, ...), so each step reads and writes contiguous blocks.
"""
import numbers

import numpy as np

from .. import activations, initializers, regularizers
from .base import BufferCache, Layer, format_shape
from .conv import _spec_name


def orthogonal(shape, rng, dtype="float32"):
    """A random orthogonal matrix (Saxe et al.), Keras' default recurrent kernel:
    all singular values 1, so at initialisation U neither grows nor shrinks h."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))        # a uniform draw, not biased by the QR's sign convention
    q = q if rows >= cols else q.T
    return q[:rows, :cols].astype(dtype)


def _initializer(spec):
    return orthogonal if spec == "orthogonal" else initializers.get(spec)


class SimpleRNN(Layer):
    """Fully connected recurrent layer h_t = act(x_t W + h_{t-1} U + b) (see the module notes).

    Parameters
    ----------
    units : int
    activation : str or Activation (default "tanh")
    return_sequences : bool
        Output every h_t (N, T, units) instead of the last one (N, units).
    use_bias : bool
    kernel_initializer, recurrent_initializer, bias_initializer : name or callable
        Defaults: glorot_uniform, orthogonal (a name accepted here), zeros.
    kernel_regularizer, recurrent_regularizer, bias_regularizer : Regularizer or None
    name : str or None
    """

    def __init__(self, units, activation="tanh", return_sequences=False, use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, name=None):
        super().__init__(name=name)
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"{self._describe()}: units must be a positive integer, "
                             f"got {units!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        if self.activation.name == "softmax":
            raise ValueError(f"{self._describe()}: softmax is not an elementwise activation; "
                             f"use it on a Dense layer after the RNN")
        self.return_sequences = bool(return_sequences)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self._kernel_init = _initializer(kernel_initializer)
        self._recurrent_init = _initializer(recurrent_initializer)
        self._bias_init = _initializer(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self._buffers = BufferCache()
        self._x_tm = None     # input of the last forward, time-major (T, N, features)

    # -- building -------------------------------------------------------------------

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self._describe()} expects sequences (N, timesteps, features), "
                             f"got shape {format_shape(input_shape)}")
        steps = input_shape[0]
        return (steps, self.units) if self.return_sequences else (self.units,)

    def build(self, input_shape, dtype, rng, backend=None):
        """Create W (features, units), U (units, units) and b (units,)."""
        output_shape = super().build(input_shape, dtype, rng, backend)
        features = self.input_shape[1]
        self.add_param("W", self._kernel_init((features, self.units), rng, self.dtype))
        self.add_param("U", self._recurrent_init((self.units, self.units), rng, self.dtype))
        if self.use_bias:
            self.add_param("b", self._bias_init((self.units,), rng, self.dtype))
        self._buffers.clear()
        return output_shape

    def regularized_params(self):
        pairs = [("W", self.kernel_regularizer), ("U", self.recurrent_regularizer),
                 ("b", self.bias_regularizer)]
        return [(name, reg) for name, reg in pairs if reg is not None and name in self.params]

    # -- forward / backward -----------------------------------------------------------

    def forward(self, x, training=False):
        """Run the T steps; returns h_T (N, units) or h_1..h_T (N, T, units)."""
        self.check_input(x)
        n = x.shape[0]
        steps, features = self.input_shape
        units = self.units
        backend = self.backend
        x_tm = np.ascontiguousarray(x.transpose(1, 0, 2))               # (T, N, F)
        # z[t] = x_t W + b for every step at once, then h_{t-1} U added step by step.
        z = self._buffers.get("z", (steps, n, units), self.dtype)
        backend.dense_forward(x_tm.reshape(steps * n, features), self.params["W"],
                              self.params.get("b"), "linear", out=z.reshape(steps * n, units))
        h = self._buffers.get("h", (steps + 1, n, units), self.dtype)    # h[0] = h_0 = 0
        h[0] = 0
        u = self.params["U"]
        for t in range(steps):
            backend.gemm(h[t], u, out=z[t], beta=1.0)
            self.activation.forward(z[t], backend, out=h[t + 1])
        self._x_tm = x_tm
        if self.return_sequences:
            return np.ascontiguousarray(h[1:].transpose(1, 0, 2))
        return h[steps].copy()

    def backward(self, dy, need_dx=True):
        """Backpropagation through time; writes dL/dW, dL/dU, dL/db and returns dL/dx."""
        if self._x_tm is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        steps, features = self.input_shape
        n = self._x_tm.shape[1]
        self.check_output_grad(dy, n)
        units = self.units
        backend = self.backend
        z = self._buffers.get("z", (steps, n, units), self.dtype)
        h = self._buffers.get("h", (steps + 1, n, units), self.dtype)
        dz = self._buffers.get("dz", (steps, n, units), self.dtype)
        carried = self._buffers.get("carried", (n, units), self.dtype)   # dL/dh_t from step t+1
        dh = self._buffers.get("dh", (n, units), self.dtype)
        dy_tm = np.ascontiguousarray(dy.transpose(1, 0, 2)) if self.return_sequences else None
        u = self.params["U"]
        carried[...] = 0
        for t in range(steps - 1, -1, -1):
            if self.return_sequences:
                np.add(dy_tm[t], carried, out=dh)
            elif t == steps - 1:
                np.add(dy, carried, out=dh)
            else:
                dh[...] = carried
            self.activation.backward(h[t + 1], dh, backend, x=z[t], out=dz[t])
            if t > 0:
                backend.gemm(dz[t], u, out=carried, trans_b=True)       # dz_t U^T
        dz2 = dz.reshape(steps * n, units)
        backend.gemm(self._x_tm.reshape(steps * n, features), dz2, out=self.grads["W"],
                     trans_a=True)
        backend.gemm(h[:steps].reshape(steps * n, units), dz2, out=self.grads["U"],
                     trans_a=True)
        if self.use_bias:
            np.sum(dz2, axis=0, out=self.grads["b"])
        self.add_regularization_gradients()
        if not need_dx:
            return None
        dx_tm = self._buffers.get("dx_tm", (steps, n, features), self.dtype)
        backend.gemm(dz2, self.params["W"], out=dx_tm.reshape(steps * n, features),
                     trans_b=True)
        return np.ascontiguousarray(dx_tm.transpose(1, 0, 2))

    # -- config -------------------------------------------------------------------------

    def get_config(self):
        def reg(r):
            return None if r is None else r.serialize()
        return {
            "units": self.units,
            "activation": self.activation.get_config(),
            "return_sequences": self.return_sequences,
            "use_bias": self.use_bias,
            "kernel_initializer": _spec_name(self.kernel_initializer),
            "recurrent_initializer": _spec_name(self.recurrent_initializer),
            "bias_initializer": _spec_name(self.bias_initializer),
            "kernel_regularizer": reg(self.kernel_regularizer),
            "recurrent_regularizer": reg(self.recurrent_regularizer),
            "bias_regularizer": reg(self.bias_regularizer),
            "name": self.name,
        }
