"""A layer that applies an activation function elementwise (or row-wise for softmax)."""
from .. import activations
from .base import BufferCache, Layer


class Activation(Layer):
    """Apply ``activation`` to the input; no parameters.

    For softmax the input is the logits, so ``backward_from_logits(dz)``
    simply returns dz (the gradient w.r.t. this layer's input).

    Extra keyword arguments configure a parameterised activation, e.g.
    ``Activation("sigmoid", slope=4.0)`` or ``Activation("elu", alpha=0.5)``.
    """

    def __init__(self, activation, name=None, **activation_kwargs):
        super().__init__(name=name)
        self.activation = activations.get(activation, **activation_kwargs)
        self._buffers = BufferCache()
        self._x = None
        self._y = None
        self.logits = None

    def forward(self, x, training=False):
        """act(x); returns a reused buffer."""
        self.check_input(x)
        out = self._buffers.get("out", x.shape, self.dtype)
        self.activation.forward(x, self.backend, out=out)
        self._x = x
        self._y = out
        # The input is the pre-activation; the fused loss path reads it here.
        self.logits = x
        return out

    def backward(self, dy, need_dx=True):
        """dL/dx = act'(x) * dy (softmax: the row-wise Jacobian product)."""
        if self._x is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._x.shape[0])
        if not need_dx:
            return None
        dx = self._buffers.get("dx", self._x.shape, self.dtype)
        return self.activation.backward(self._y, dy, self.backend, x=self._x, out=dx)

    def backward_from_logits(self, dz, need_dx=True):
        """The gradient w.r.t. the pre-activation is the gradient w.r.t. the input."""
        if self._x is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dz, self._x.shape[0])
        return dz if need_dx else None

    def get_config(self):
        return {"activation": self.activation.get_config(), "name": self.name}
