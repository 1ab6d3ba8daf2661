"""Residual connection (He et al. 2016): output = inner(x) + shortcut(x).

``Residual([Conv2D(16, 3, padding="same", activation="relu"), Conv2D(16, 3,
padding="same")], activation="relu")`` is a basic ResNet block. The inner
layers run in sequence; the shortcut is the identity (the inner stack must
then keep the input's shape) or a layer given as ``shortcut=`` that maps the
input to the inner stack's output shape, typically a 1x1 ``Conv2D`` or a
``Dense`` projection. ``activation`` (optional) is applied after the sum.

Backward sends dL/d(sum) down both paths and adds the two input gradients.
The sum and an activation the backend can fuse (relu, ...) run as one C pass
(``backend.add_act``), as does the final sum of the two gradients.

The block's parameters and state are its children's, exposed under
"child/name" keys ("conv2d/W", "shortcut/W", ...) as aliases of the same
arrays, so optimizers, gradient checks, ``get_weights``/``save`` and
``summary()`` see them without knowing about nesting. Setting
``trainable = False`` on the block freezes all of it; on a child, that
child only.
"""

from .activation import Activation
from .base import BufferCache, Layer, default_name, format_shape


class Residual(Layer):
    """``activation(inner(x) + shortcut(x))``: a block with a skip connection.

    Parameters
    ----------
    layers : Layer or list of Layer
        The inner stack, applied in order.
    shortcut : Layer, optional
        Maps the input to the inner output's shape; None means the identity.
    activation : str, optional
        Applied after the addition (e.g. "relu", as in ResNet).
    """

    def __init__(self, layers, shortcut=None, activation=None, name=None):
        super().__init__(name=name)
        if isinstance(layers, Layer):
            layers = [layers]
        try:
            layers = list(layers)
        except TypeError:
            raise TypeError(f"{self._describe()}: layers must be a Layer or a list of Layers, "
                            f"got {type(layers).__name__}") from None
        if not layers:
            raise ValueError(f"{self._describe()}: layers must hold at least one layer")
        for layer in layers + ([shortcut] if shortcut is not None else []):
            if not isinstance(layer, Layer):
                raise TypeError(f"{self._describe()}: expected Layer instances, "
                                f"got {type(layer).__name__}")
        children = layers + ([shortcut] if shortcut is not None else [])
        if len({id(layer) for layer in children}) != len(children):
            raise ValueError(f"{self._describe()}: the same layer instance appears twice")
        self.inner = layers
        self.shortcut = shortcut
        self._name_children(children)
        self._activation = None if activation is None else Activation(activation,
                                                                      name="activation")
        self._buffers = BufferCache()
        self._batch = None
        self._fused_out = None   # the sum's activated output, when add_act applied the activation

    def _name_children(self, children):
        """Unique names within the block: given ones kept, others "conv2d", "conv2d_1", ..."""
        used = set()
        for layer in children:
            if layer.name is not None:
                if layer.name in used:
                    raise ValueError(f"{self._describe()}: duplicate layer name {layer.name!r}")
                used.add(layer.name)
        for layer in children:
            if layer.name is None:
                base = "shortcut" if layer is self.shortcut else default_name(type(layer))
                name, i = base, 0
                while name in used:
                    i += 1
                    name = f"{base}_{i}"
                layer.name = name
                used.add(name)

    def sublayers(self):
        return list(self.inner) + ([self.shortcut] if self.shortcut is not None else [])

    # -- building ---------------------------------------------------------------

    def build(self, input_shape, dtype, rng, backend=None):
        """Build the inner stack and the shortcut; check that their outputs can be added."""
        super().build(input_shape, dtype, rng, backend)
        shape = self.input_shape
        for layer in self.inner:
            shape = tuple(layer.build(shape, self.dtype, rng, backend=self.backend))
        if self.shortcut is None:
            if shape != self.input_shape:
                raise ValueError(
                    f"{self._describe()}: the inner layers map {format_shape(self.input_shape)} "
                    f"to {format_shape(shape)}, but the identity shortcut keeps "
                    f"{format_shape(self.input_shape)}; pass a projection, e.g. "
                    f"shortcut=Conv2D({shape[-1]}, 1, strides=...) for images or "
                    f"shortcut=Dense({shape[-1]}) for vectors")
        else:
            short = tuple(self.shortcut.build(self.input_shape, self.dtype, rng,
                                              backend=self.backend))
            if short != shape:
                raise ValueError(
                    f"{self._describe()}: the shortcut {self.shortcut._describe()} maps "
                    f"{format_shape(self.input_shape)} to {format_shape(short)}, but the inner "
                    f"layers give {format_shape(shape)}; the two must match to be added")
        if self._activation is not None:
            self._activation.build(shape, self.dtype, rng, backend=self.backend)
        self.output_shape = shape
        # Aliases of the children's arrays (the same objects, not copies).
        self.params, self.grads, self.state = {}, {}, {}
        for child in self.sublayers():
            for key, value in child.params.items():
                self.params[f"{child.name}/{key}"] = value
                self.grads[f"{child.name}/{key}"] = child.grads[key]
            for key, value in child.state.items():
                self.state[f"{child.name}/{key}"] = value
        self._buffers.clear()
        return shape

    def is_param_trainable(self, name):
        child_name, _, key = name.partition("/")
        child = next(c for c in self.sublayers() if c.name == child_name)
        return self.trainable and child.is_param_trainable(key)

    # -- forward / backward -----------------------------------------------------

    def forward(self, x, training=False):
        """activation(inner(x) + shortcut(x)); returns a reused buffer."""
        self.check_input(x)
        h = x
        for layer in self.inner:
            h = layer.forward(h, training=training)
        skip = x if self.shortcut is None else self.shortcut.forward(x, training=training)
        out = self._buffers.get("sum", h.shape, self.dtype)
        self._batch = x.shape[0]
        act = self._activation
        # The sum and an activation the backend fuses (relu, ...) in one C pass.
        self._fused_out = out if act is not None and act.activation.fused else None
        self.backend.add_act(h, skip, "linear" if self._fused_out is None else act.activation.name,
                             out=out)
        if act is not None and self._fused_out is None:
            out = act.forward(out, training=training)
        return out

    def backward(self, dy, need_dx=True):
        """Backpropagate through both paths; dx = dx_inner + dx_shortcut."""
        if self._batch is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._batch)
        if self._fused_out is not None:
            dsum = self._buffers.get("dsum", self._fused_out.shape, self.dtype)
            dy = self.backend.activation_backward(self._activation.activation.name,
                                                  self._fused_out, dy, out=dsum)
        elif self._activation is not None:
            dy = self._activation.backward(dy, need_dx=True)
        g = dy
        last = len(self.inner) - 1
        for i in range(last, -1, -1):
            g = self.inner[i].backward(g, need_dx=(i > 0 or need_dx))
        if self.shortcut is None:
            skip = dy
        else:
            skip = self.shortcut.backward(dy, need_dx=need_dx)
        if not need_dx:
            return None
        dx = self._buffers.get("dx", (self._batch,) + self.input_shape, self.dtype)
        return self.backend.add_act(g, skip, "linear", out=dx)

    def regularization_loss(self):
        return float(sum(layer.regularization_loss() for layer in self.sublayers()))

    # -- serialisation ------------------------------------------------------------

    def get_config(self):
        return {"layers": [layer.serialize() for layer in self.inner],
                "shortcut": None if self.shortcut is None else self.shortcut.serialize(),
                "activation": None if self._activation is None
                else self._activation.activation.get_config(),
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        from . import deserialize  # the package imports this module
        config = dict(config)
        config["layers"] = [deserialize(c) for c in config["layers"]]
        if config.get("shortcut") is not None:
            config["shortcut"] = deserialize(config["shortcut"])
        return cls(**config)
