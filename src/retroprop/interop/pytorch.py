"""PyTorch weights in and out: ``from_torch(torch_module, model)`` and ``to_torch(model)``.

torch is optional: it is imported when one of these functions runs.

Layouts. retroprop keeps images channels-last (NHWC, (N, L, C) for 1-D) and
dense kernels as (in, out); PyTorch keeps them channels-first and (out, in):

==========================  =====================  ====================
weight                      retroprop              PyTorch
==========================  =====================  ====================
Dense / nn.Linear           W (in, out), b (out,)  weight (out, in), bias
Conv2D / nn.Conv2d          W (kh, kw, C, F)       weight (F, C, kh, kw)
Conv1D / nn.Conv1d          W (k, C, F)            weight (F, C, k)
BatchNormalization /        gamma, beta,           weight, bias,
nn.BatchNorm1d/2d           moving_mean/_variance  running_mean/_var
PReLU / nn.PReLU            alpha (C,)             weight (C,)
==========================  =====================  ====================

A Dense layer that follows ``Flatten`` of images sees the pixels in
(H, W, C) order, PyTorch's ``nn.Linear`` after ``nn.Flatten`` in (C, H, W)
order: its kernel rows are permuted on the way in and out, so both models
compute the same function (PyTorch's on NCHW input, retroprop's on NHWC).

``running_var`` is used as is: at inference both frameworks divide by
sqrt(var + eps). (In training PyTorch feeds the *unbiased* batch variance
into it and its ``momentum`` is retroprop's ``1 - momentum``; ``to_torch``
converts the momentum.)
"""
import numpy as np

from .. import layers as L
from . import MissingDependencyError


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("PyTorch interop needs torch: pip install torch") from None
    return torch


# ---------------------------------------------------------------- walking the retroprop model

_WEIGHTED = (L.Dense, L.Conv1D, L.Conv2D, L.BatchNormalization, L.PReLU)
# Layers that keep the shape (a Flatten's output keeps its pixel order through them).
_SHAPE_KEEPING = (L.Dropout, L.Activation, L.LeakyReLU, L.ELU, L.RReLU, L.PReLU,
                  L.BatchNormalization)


def _weighted_layers(layers, out=None):
    """(layer, flattened image shape or None) of every weighted layer, in order.

    The shape is that of the image a Flatten turned into this Dense layer's
    input (its kernel rows then need permuting), else None.
    """
    out = [] if out is None else out
    flattened = None
    for layer in layers:
        if isinstance(layer, L.Residual):
            _weighted_layers(layer.sublayers(), out)
            flattened = None
            continue
        if isinstance(layer, _WEIGHTED):
            out.append((layer, flattened if type(layer) is L.Dense else None))
        if type(layer) is L.Flatten:
            flattened = tuple(layer.input_shape) if len(layer.input_shape) > 1 else None
        elif not isinstance(layer, _SHAPE_KEEPING):
            flattened = None
    return out


def _dense_rows_to_torch(w, image_shape):
    """retroprop W (in, out), rows in (..., C) order -> torch weight (out, in) in (C, ...) order."""
    out_features = w.shape[1]
    rank = len(image_shape)
    blocks = w.T.reshape((out_features,) + tuple(image_shape))       # (out, H, W, C)
    perm = (0, rank) + tuple(range(1, rank))                          # (out, C, H, W)
    return blocks.transpose(perm).reshape(out_features, -1)


def _dense_rows_from_torch(weight, image_shape):
    """The inverse of :func:`_dense_rows_to_torch`."""
    out_features = weight.shape[0]
    rank = len(image_shape)
    channels_first = (image_shape[-1],) + tuple(image_shape[:-1])
    blocks = weight.reshape((out_features,) + channels_first)         # (out, C, H, W)
    perm = (0,) + tuple(range(2, rank + 1)) + (1,)                    # (out, H, W, C)
    return blocks.transpose(perm).reshape(out_features, -1).T


def _torch_kind(layer):
    if type(layer) is L.Dense:
        return "Linear"
    if type(layer) is L.Conv2D:
        return "Conv2d"
    if type(layer) is L.Conv1D:
        return "Conv1d"
    if type(layer) is L.PReLU:
        return "PReLU"
    return "BatchNorm2d" if len(layer.input_shape) == 3 else "BatchNorm1d"


def _describe(layer):
    return f"{type(layer).__name__} {layer.name!r}"


# ---------------------------------------------------------------- weights in

def _torch_weighted_modules(torch, module):
    """[(weighted module, zero padding (before, after per axis) of a pad module just before)]."""
    nn = torch.nn
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU)
    out, pad = [], None
    for m in module.modules():
        if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d)) and m.value == 0:
            p = tuple(m.padding)       # PyTorch lists the last axis first
            pad = (p[2], p[3], p[0], p[1]) if len(p) == 4 else p
        elif isinstance(m, kinds):
            out.append((m, pad))
            pad = None
        elif not isinstance(m, (nn.Sequential, nn.ModuleList)) and list(m.children()) == []:
            pad = None
    return out


def _array(t):
    return t.detach().cpu().double().numpy()


def _check_shape(layer, key, value, torch_name, module):
    expected = layer.params[key].shape if key in layer.params else layer.state[key].shape
    if value.shape != expected:
        raise ValueError(f"{_describe(layer)} {key} has shape {expected}, but {torch_name} "
                         f"gives {value.shape} (from {module})")


def _check_conv_geometry(layer, module, pad):
    rank = layer.rank
    if module.groups != 1 or module.padding_mode != "zeros":
        raise ValueError(f"{module} (groups={module.groups}, padding_mode="
                         f"{module.padding_mode!r}) has no retroprop counterpart for "
                         f"{_describe(layer)}")
    if tuple(module.stride) != layer.strides or tuple(module.dilation) != layer.dilation_rate:
        raise ValueError(f"{_describe(layer)} has strides {layer.strides} and dilation "
                         f"{layer.dilation_rate}, {module} has stride {tuple(module.stride)} "
                         f"and dilation {tuple(module.dilation)}")
    top, bottom, left, right = layer._pads
    ours = (top, bottom, left, right) if rank == 2 else (left, right)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            theirs = (0,) * (2 * rank)
        else:          # "same" (stride 1): the extra cell after, as retroprop's rule
            theirs = ()
            for k, d in zip(module.kernel_size, module.dilation):
                total = d * (k - 1)
                theirs += (total // 2, total - total // 2)
    else:
        theirs = tuple(p for p in module.padding for _ in range(2))
    if pad is not None:        # an explicit pad module before the convolution
        theirs = tuple(a + b for a, b in zip(theirs, pad))
    if theirs != ours:
        raise ValueError(f"{_describe(layer)} pads {ours} (before/after per axis), {module} "
                         f"pads {theirs}")


def from_torch(torch_module, model):
    """Copy the weights of ``torch_module`` into the built retroprop ``model``, in place.

    The PyTorch module's ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``,
    ``nn.BatchNorm1d/2d`` and ``nn.PReLU`` submodules, in the order
    ``module.modules()`` lists them (an ``nn.Sequential``'s order), are paired
    with the model's Dense, Conv1D, Conv2D, BatchNormalization and PReLU
    layers in order (a Residual's inner layers, then its shortcut). Kinds,
    shapes, convolution geometry and BatchNorm epsilon must agree (ValueError
    naming both sides otherwise); nothing is written unless all do. Returns
    the model.
    """
    torch = _torch()
    if not getattr(model, "built", False):
        raise ValueError("the retroprop model is not built; give it an input_shape first")
    ours = _weighted_layers(model.layers)
    theirs = _torch_weighted_modules(torch, torch_module)
    if len(ours) != len(theirs):
        raise ValueError(
            f"the retroprop model has {len(ours)} weighted layers "
            f"({', '.join(_torch_kind(layer) for layer, _ in ours)} in PyTorch terms), the "
            f"PyTorch module {len(theirs)} ({', '.join(type(m).__name__ for m, _ in theirs)})")
    updates = []     # (array to write into, new value): applied only when everything fits
    for (layer, flattened), (module, pad) in zip(ours, theirs):
        kind = _torch_kind(layer)
        if type(module).__name__ != kind:
            raise ValueError(f"{_describe(layer)} pairs with a {kind}, got {module}")
        values = {}
        if kind == "Linear":
            w = _array(module.weight)
            if flattened is not None and w.shape[1] == int(np.prod(flattened)):
                w = _dense_rows_from_torch(w, flattened)
            else:
                w = w.T
            values["W"] = w
            if layer.use_bias != (module.bias is not None):
                raise ValueError(f"{_describe(layer)} use_bias={layer.use_bias}, {module} "
                                 f"has bias={module.bias is not None}")
            if module.bias is not None:
                values["b"] = _array(module.bias)
        elif kind in ("Conv1d", "Conv2d"):
            _check_conv_geometry(layer, module, pad)
            values["W"] = np.moveaxis(_array(module.weight), [0, 1], [-1, -2])
            if layer.use_bias != (module.bias is not None):
                raise ValueError(f"{_describe(layer)} use_bias={layer.use_bias}, {module} "
                                 f"has bias={module.bias is not None}")
            if module.bias is not None:
                values["b"] = _array(module.bias)
        elif kind == "PReLU":
            alpha = _array(module.weight)
            values["alpha"] = np.broadcast_to(alpha, layer.params["alpha"].shape).copy()
        else:
            if layer._channel_axis != len(layer.input_shape):
                raise ValueError(f"{_describe(layer)} normalises axis {layer.axis}; only the "
                                 f"channel (last) axis maps to PyTorch's BatchNorm")
            if abs(layer.epsilon - module.eps) > 1e-12 * max(1.0, module.eps):
                raise ValueError(f"{_describe(layer)} has epsilon={layer.epsilon}, {module} "
                                 f"eps={module.eps}; build the layer with "
                                 f"epsilon={module.eps}")
            if module.affine != (layer.scale and layer.center):
                raise ValueError(f"{_describe(layer)} scale={layer.scale}, center="
                                 f"{layer.center}; {module} affine={module.affine}")
            if module.running_mean is None:
                raise ValueError(f"{module} keeps no running statistics "
                                 f"(track_running_stats=False)")
            if module.affine:
                values["gamma"] = _array(module.weight)
                values["beta"] = _array(module.bias)
            values["moving_mean"] = _array(module.running_mean)
            values["moving_variance"] = _array(module.running_var)
        for key, value in values.items():
            _check_shape(layer, key, value, f"{type(module).__name__}", module)
            target = layer.params[key] if key in layer.params else layer.state[key]
            updates.append((target, value))
    for target, value in updates:
        np.copyto(target, value, casting="same_kind")
    return model


# ---------------------------------------------------------------- weights out

_TORCH_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "softplus": "Softplus", "swish": "SiLU"}


def _activation_module(torch, activation, where, channel_dim=-1):
    """An nn.Module for a retroprop activation (None for linear)."""
    nn = torch.nn
    name = activation.name
    if name == "linear":
        return None
    if name in _TORCH_ACTIVATIONS:
        return getattr(nn, _TORCH_ACTIVATIONS[name])()
    if name == "sigmoid" and activation.slope == 1.0:
        return nn.Sigmoid()
    if name == "softmax":
        return nn.Softmax(dim=channel_dim)
    if name == "leaky_relu":
        return nn.LeakyReLU(activation.alpha)
    if name == "elu":
        return nn.ELU(activation.alpha)
    if name == "gelu":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"{where}: activation {activation!r} has no PyTorch module here")


def _pad_pairs(layer):
    top, bottom, left, right = layer._pads
    return (top, bottom, left, right) if layer.rank == 2 else (left, right)


def _torch_layers(torch, layers, where, dtype, flattened=None):
    """nn modules for a chain of retroprop layers (channels-first, as PyTorch expects).

    Weighted modules are made in ``dtype`` before the weights are copied in,
    so float64 weights are not rounded through float32 on the way.
    """
    nn = torch.nn
    kw = {"dtype": dtype}
    modules = []
    for layer in layers:
        desc = f"{where}{_describe(layer)}"
        kind = type(layer)
        if kind is L.Dense:
            linear = nn.Linear(layer.input_shape[0], layer.units, bias=layer.use_bias, **kw)
            w = layer.params["W"].astype(np.float64)
            w = _dense_rows_to_torch(w, flattened) if flattened is not None else w.T
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                if layer.use_bias:
                    linear.bias.copy_(torch.from_numpy(layer.params["b"].astype(np.float64)))
            modules.append(linear)
            act = _activation_module(torch, layer.activation, desc)
            if act is not None:
                modules.append(act)
            flattened = None
        elif kind in (L.Conv1D, L.Conv2D):
            rank = layer.rank
            conv_cls = nn.Conv2d if rank == 2 else nn.Conv1d
            pads = _pad_pairs(layer)
            symmetric = all(pads[2 * i] == pads[2 * i + 1] for i in range(rank))
            if not symmetric:
                # nn.ZeroPad* take (left, right, top, bottom): the last axis first.
                pad_cls = nn.ZeroPad2d if rank == 2 else nn.ConstantPad1d
                order = (pads[2], pads[3], pads[0], pads[1]) if rank == 2 else pads
                modules.append(pad_cls(order) if rank == 2 else pad_cls(order, 0.0))
            conv = conv_cls(layer.input_shape[-1], layer.filters, layer.kernel_size,
                            stride=layer.strides, dilation=layer.dilation_rate,
                            padding=tuple(pads[::2]) if symmetric else 0, bias=layer.use_bias,
                            **kw)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(
                    np.ascontiguousarray(np.moveaxis(layer.params["W"].astype(np.float64),
                                                     [-1, -2], [0, 1]))))
                if layer.use_bias:
                    conv.bias.copy_(torch.from_numpy(layer.params["b"].astype(np.float64)))
            modules.append(conv)
            act = _activation_module(torch, layer.activation, desc, channel_dim=1)
            if act is not None:
                modules.append(act)
            flattened = None
        elif kind in (L.MaxPool1D, L.MaxPool2D, L.AvgPool1D, L.AvgPool2D):
            pads = _pad_pairs(layer)
            rank = layer.rank
            if any(pads):
                if layer.mode == "avg" or any(pads[2 * i] != pads[2 * i + 1]
                                              for i in range(rank)):
                    raise ValueError(f"{desc}: padding {layer.padding!r} (pads {pads}) has no "
                                     f"exact PyTorch pooling equivalent here")
            pool = {("max", 2): nn.MaxPool2d, ("max", 1): nn.MaxPool1d,
                    ("avg", 2): nn.AvgPool2d, ("avg", 1): nn.AvgPool1d}[(layer.mode, rank)]
            modules.append(pool(layer.pool_size, stride=layer.strides,
                                padding=tuple(pads[::2])))
            flattened = None
        elif kind is L.GlobalAvgPool2D:
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            flattened = None
        elif kind is L.BatchNormalization:
            if layer._channel_axis != len(layer.input_shape):
                raise ValueError(f"{desc}: only the channel (last) axis maps to PyTorch")
            channels = layer.input_shape[-1]
            bn_cls = nn.BatchNorm2d if len(layer.input_shape) == 3 else nn.BatchNorm1d
            bn = bn_cls(channels, eps=layer.epsilon, momentum=1.0 - layer.momentum,
                        affine=layer.scale and layer.center, **kw)
            if layer.scale != layer.center:
                raise ValueError(f"{desc}: scale={layer.scale} with center={layer.center} "
                                 f"has no PyTorch BatchNorm equivalent")
            with torch.no_grad():
                if bn.affine:
                    bn.weight.copy_(torch.from_numpy(layer.params["gamma"].astype(np.float64)))
                    bn.bias.copy_(torch.from_numpy(layer.params["beta"].astype(np.float64)))
                bn.running_mean.copy_(torch.from_numpy(
                    layer.state["moving_mean"].astype(np.float64)))
                bn.running_var.copy_(torch.from_numpy(
                    layer.state["moving_variance"].astype(np.float64)))
            modules.append(bn)
        elif kind is L.Flatten:
            modules.append(nn.Flatten())
            flattened = tuple(layer.input_shape) if len(layer.input_shape) > 1 else None
        elif kind is L.Dropout:
            modules.append(nn.Dropout(layer.rate))
        elif kind is L.Activation:
            channel_dim = 1 if len(layer.input_shape) > 1 else -1
            act = _activation_module(torch, layer.activation, desc, channel_dim=channel_dim)
            modules.append(act if act is not None else nn.Identity())
        elif kind is L.LeakyReLU:
            modules.append(nn.LeakyReLU(layer.alpha))
        elif kind is L.ELU:
            modules.append(nn.ELU(layer.alpha))
        elif kind is L.PReLU:
            prelu = nn.PReLU(layer.params["alpha"].size, **kw)
            with torch.no_grad():
                prelu.weight.copy_(torch.from_numpy(layer.params["alpha"].astype(np.float64)))
            modules.append(prelu)
        elif kind is L.Residual:
            modules.append(_residual_module(torch, layer, desc, dtype))
            flattened = None
        else:
            raise ValueError(f"{desc} has no PyTorch counterpart in to_torch")
    return modules


def _residual_module(torch, layer, desc, dtype):
    nn = torch.nn

    class Residual(nn.Module):
        """activation(inner(x) + shortcut(x)), retroprop's Residual block."""

        def __init__(self, inner, shortcut, activation):
            super().__init__()
            self.inner = inner
            self.shortcut = shortcut
            self.activation = activation

        def forward(self, x):
            y = self.inner(x) + (x if self.shortcut is None else self.shortcut(x))
            return y if self.activation is None else self.activation(y)

    inner = nn.Sequential(*_torch_layers(torch, layer.inner, f"{desc}/", dtype))
    shortcut = None
    if layer.shortcut is not None:
        shortcut = nn.Sequential(*_torch_layers(torch, [layer.shortcut], f"{desc}/", dtype))
    act = None
    if layer._activation is not None:
        act = _activation_module(torch, layer._activation.activation, desc, channel_dim=1)
    return Residual(inner, shortcut, act)


def to_torch(model, dtype=None):
    """An ``nn.Sequential`` computing what ``model.predict`` computes, on channels-first input.

    Images go in as NCHW (``x.transpose(0, 3, 1, 2)`` of retroprop's NHWC),
    1-D data as (N, C, L). The module is in eval mode (Dropout off,
    BatchNorm on its running statistics); its dtype is the model's
    (float32 or float64) unless ``dtype`` (a torch dtype) is given.
    ValueError names a layer without a PyTorch counterpart.
    """
    torch = _torch()
    if not getattr(model, "built", False):
        raise ValueError("the retroprop model is not built; give it an input_shape first")
    if dtype is None:
        dtype = torch.float64 if model.dtype == np.float64 else torch.float32
    net = torch.nn.Sequential(*_torch_layers(torch, model.layers, "", dtype))
    return net.to(dtype).eval()
