"""LSTM: the long short-term memory cell (Hochreiter & Schmidhuber 1997), with
backpropagation through time.

For an input sequence x_1 .. x_T (per-sample shape (T, features)), with
h_0 = c_0 = 0 and the four gates computed from one product::

    z_t = x_t W + h_{t-1} U + b          (N, 4 units): blocks i, f, g, o
    i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
    c_t = f * c_{t-1} + i * g            (the cell: additive memory)
    h_t = o * tanh(c_t)

The gate order i, f, g, o and the shapes W (features, 4 units), U (units,
4 units), b (4 units,) are Keras' (and PyTorch's order, transposed). The
forget gate's bias starts at 1 (``unit_forget_bias``, as in Keras), so the
cell remembers by default.

Backward, one step back in time (dh and dc include what step t+1 passed down)::

    do = dh * tanh(c_t)              dc += dh * o * (1 - tanh(c_t)^2)
    di = dc * g    dg = dc * i       df = dc * c_{t-1}     dc_{t-1} = dc * f
    dz = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]
    dh_{t-1} = dz U^T

then dW, dU, db and dx exactly as in SimpleRNN. The carried dc_{t-1} = dc * f
is multiplied by the forget gate only, not by a weight matrix, which is why
an LSTM's gradient survives many more steps than a SimpleRNN's.

The products run on the backend (``dense_forward`` for the input projection
of all steps, ``gemm`` per step, the sigmoid and tanh kernels); the gate
arithmetic is elementwise NumPy.
"""
import numbers

import numpy as np

from .. import initializers, regularizers
from .base import BufferCache, Layer, format_shape
from .conv import _spec_name
from .rnn import orthogonal


def _initializer(spec):
    return orthogonal if spec == "orthogonal" else initializers.get(spec)


class LSTM(Layer):
    """Long short-term memory layer (see the module notes).

    Parameters
    ----------
    units : int
    return_sequences : bool
        Output every h_t (N, T, units) instead of the last one (N, units).
    kernel_initializer, recurrent_initializer, bias_initializer : name or callable
        Defaults glorot_uniform, orthogonal, zeros (Keras').
    unit_forget_bias : bool (default True): the forget gate's bias starts at 1.
    kernel_regularizer, recurrent_regularizer, bias_regularizer : Regularizer or None
    name : str or None
    """

    def __init__(self, units, return_sequences=False, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias=True, kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, name=None):
        super().__init__(name=name)
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"{self._describe()}: units must be a positive integer, "
                             f"got {units!r}")
        self.units = int(units)
        self.return_sequences = bool(return_sequences)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self._kernel_init = _initializer(kernel_initializer)
        self._recurrent_init = _initializer(recurrent_initializer)
        self._bias_init = _initializer(bias_initializer)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self._buffers = BufferCache()
        self._x_tm = None

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self._describe()} expects sequences (N, timesteps, features), "
                             f"got shape {format_shape(input_shape)}")
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    def build(self, input_shape, dtype, rng, backend=None):
        """Create W (features, 4 units), U (units, 4 units) and b (4 units,)."""
        output_shape = super().build(input_shape, dtype, rng, backend)
        u, features = self.units, self.input_shape[1]
        self.add_param("W", self._kernel_init((features, 4 * u), rng, self.dtype))
        # One orthogonal block per gate, as Keras does for its recurrent kernel.
        blocks = [self._recurrent_init((u, u), rng, self.dtype) for _ in range(4)]
        self.add_param("U", np.concatenate(blocks, axis=1))
        bias = np.asarray(self._bias_init((4 * u,), rng, self.dtype))
        if self.unit_forget_bias:
            bias = bias.copy()
            bias[u:2 * u] = 1.0
        self.add_param("b", bias)
        self._buffers.clear()
        return output_shape

    def regularized_params(self):
        pairs = [("W", self.kernel_regularizer), ("U", self.recurrent_regularizer),
                 ("b", self.bias_regularizer)]
        return [(name, reg) for name, reg in pairs if reg is not None]

    # -- forward / backward -------------------------------------------------------------

    def forward(self, x, training=False):
        """Run the T steps; returns h_T (N, units) or h_1..h_T (N, T, units)."""
        self.check_input(x)
        n = x.shape[0]
        steps, features = self.input_shape
        u = self.units
        backend = self.backend
        buf = self._buffers
        x_tm = np.ascontiguousarray(x.transpose(1, 0, 2))
        z = buf.get("z", (steps, n, 4 * u), self.dtype)
        backend.dense_forward(x_tm.reshape(steps * n, features), self.params["W"],
                              self.params["b"], "linear", out=z.reshape(steps * n, 4 * u))
        gates = buf.get("gates", (steps, n, 4 * u), self.dtype)   # i, f, g, o after activation
        h = buf.get("h", (steps + 1, n, u), self.dtype)
        c = buf.get("c", (steps + 1, n, u), self.dtype)
        tc = buf.get("tanh_c", (steps, n, u), self.dtype)
        h[0] = 0
        c[0] = 0
        for t in range(steps):
            backend.gemm(h[t], self.params["U"], out=z[t], beta=1.0)
            backend.activation_forward("sigmoid", z[t], out=gates[t])
            gates[t][:, 2 * u:3 * u] = backend.activation_forward(
                "tanh", np.ascontiguousarray(z[t][:, 2 * u:3 * u]))
            i, f, g, o = (gates[t][:, k * u:(k + 1) * u] for k in range(4))
            np.multiply(f, c[t], out=c[t + 1])
            c[t + 1] += i * g
            backend.activation_forward("tanh", c[t + 1], out=tc[t])
            np.multiply(o, tc[t], out=h[t + 1])
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
        u = self.units
        backend = self.backend
        buf = self._buffers
        gates = buf.get("gates", (steps, n, 4 * u), self.dtype)
        h = buf.get("h", (steps + 1, n, u), self.dtype)
        c = buf.get("c", (steps + 1, n, u), self.dtype)
        tc = buf.get("tanh_c", (steps, n, u), self.dtype)
        dz = buf.get("dz", (steps, n, 4 * u), self.dtype)
        dh_carried = buf.get("dh_carried", (n, u), self.dtype)
        dc = buf.get("dc", (n, u), self.dtype)
        dy_tm = np.ascontiguousarray(dy.transpose(1, 0, 2)) if self.return_sequences else None
        dh_carried[...] = 0
        dc[...] = 0
        for t in range(steps - 1, -1, -1):
            if self.return_sequences:
                dh = dy_tm[t] + dh_carried
            elif t == steps - 1:
                dh = dy + dh_carried
            else:
                dh = dh_carried.copy()
            i, f, g, o = (gates[t][:, k * u:(k + 1) * u] for k in range(4))
            dc += dh * o * (1 - tc[t] * tc[t])
            d = dz[t]
            d[:, :u] = dc * g * i * (1 - i)
            d[:, u:2 * u] = dc * c[t] * f * (1 - f)
            d[:, 2 * u:3 * u] = dc * i * (1 - g * g)
            d[:, 3 * u:] = dh * tc[t] * o * (1 - o)
            dc *= f
            if t > 0:
                backend.gemm(d, self.params["U"], out=dh_carried, trans_b=True)
        dz2 = dz.reshape(steps * n, 4 * u)
        backend.gemm(self._x_tm.reshape(steps * n, features), dz2, out=self.grads["W"],
                     trans_a=True)
        backend.gemm(h[:steps].reshape(steps * n, u), dz2, out=self.grads["U"], trans_a=True)
        np.sum(dz2, axis=0, out=self.grads["b"])
        self.add_regularization_gradients()
        if not need_dx:
            return None
        dx_tm = buf.get("dx_tm", (steps, n, features), self.dtype)
        backend.gemm(dz2, self.params["W"], out=dx_tm.reshape(steps * n, features),
                     trans_b=True)
        return np.ascontiguousarray(dx_tm.transpose(1, 0, 2))

    def get_config(self):
        def reg(r):
            return None if r is None else r.serialize()
        return {
            "units": self.units,
            "return_sequences": self.return_sequences,
            "kernel_initializer": _spec_name(self.kernel_initializer),
            "recurrent_initializer": _spec_name(self.recurrent_initializer),
            "bias_initializer": _spec_name(self.bias_initializer),
            "unit_forget_bias": self.unit_forget_bias,
            "kernel_regularizer": reg(self.kernel_regularizer),
            "recurrent_regularizer": reg(self.recurrent_regularizer),
            "bias_regularizer": reg(self.bias_regularizer),
            "name": self.name,
        }
