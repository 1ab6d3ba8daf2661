"""Export a retroprop model to ONNX (``pip install 'retroprop[onnx]'``).

    import retroprop as rp
    rp.interop.to_onnx(model, "model.onnx")      # or: retroprop export m.rpz m.onnx

The graph computes what ``model.predict`` computes (inference: Dropout is
the identity, BatchNormalization uses its moving statistics, augmentation
layers do what they do at inference). Input ``"input"`` has shape
``(N, *model.input_shape)`` with a symbolic batch ``N``; output ``"output"``.
Everything is float32 (a float64 model's weights are rounded to float32).

Layout. retroprop's images are channels-last (NHWC); ONNX's Conv, pooling
and BatchNormalization are channels-first (NCHW). Each converter keeps its
layer's interface in retroprop's layout: it transposes to NCHW, applies the
ONNX operator and transposes back. A final pass removes every pair of
transposes that cancel (NCHW -> NHWC -> NCHW between two convolutions), so
a CNN's graph holds one transpose after the input and one before
``Flatten``, which therefore sees NHWC order exactly as retroprop's does.

Converters. One function per layer type, ``convert(layer, inputs, scope)``
with ``inputs`` the list of input tensor names and ``scope`` a prefix that
makes names unique; it returns a :class:`Converted` (nodes, initializers,
output name). :data:`CONVERTERS` maps layer classes to them; a layer with
several inputs (a merge layer of a graph model) needs only a new entry. A
layer without an entry (or a subclass of one: its computation may differ) is
refused with its name and class.
"""
import os
import tempfile
from collections import namedtuple

import numpy as np

from .. import activations as A
from .. import layers as L
from ..umask import default_file_mode
from . import MissingDependencyError

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:      # checked when an export is asked for
    onnx = None

OPSET = 17
NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]
NLC_TO_NCL = [0, 2, 1]      # 1-D data: its own inverse

Converted = namedtuple("Converted", "nodes initializers output")
Converted.__doc__ = """What a converter returns: ONNX NodeProtos, TensorProtos
(the weights) and the name of the tensor holding the layer's output."""


class ExportError(ValueError):
    """The model holds something ONNX cannot express (the message names it)."""


def _require_onnx():
    if onnx is None:
        raise MissingDependencyError("ONNX export needs the onnx package: "
                                     "pip install 'retroprop[onnx]'")


def _tensor(name, array):
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def _ints(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


# ---------------------------------------------------------------- activations

def _gelu_tanh(x, scope):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), retroprop's gelu (opset 17 has no Gelu)."""
    c = {k: _tensor(f"{scope}gelu_{k}", v) for k, v in
         (("half", 0.5), ("one", 1.0), ("k", np.sqrt(2.0 / np.pi)), ("a", 0.044715))}
    n = f"{scope}gelu_"
    nodes = [
        helper.make_node("Mul", [x, x], [n + "x2"]),
        helper.make_node("Mul", [n + "x2", x], [n + "x3"]),
        helper.make_node("Mul", [n + "x3", c["a"].name], [n + "ax3"]),
        helper.make_node("Add", [x, n + "ax3"], [n + "inner"]),
        helper.make_node("Mul", [n + "inner", c["k"].name], [n + "u"]),
        helper.make_node("Tanh", [n + "u"], [n + "t"]),
        helper.make_node("Add", [n + "t", c["one"].name], [n + "t1"]),
        helper.make_node("Mul", [x, n + "t1"], [n + "xt1"]),
        helper.make_node("Mul", [n + "xt1", c["half"].name], [n + "out"]),
    ]
    return Converted(nodes, list(c.values()), n + "out")


_BUILTIN_ACTIVATIONS = (A.Linear, A.ReLU, A.Sigmoid, A.Tanh, A.Softmax, A.Step, A.Arctan,
                        A.LeakyReLU, A.ELU, A.Softplus, A.GELU, A.Swish)


def convert_activation_function(activation, x, scope):
    """Nodes computing a retroprop activation (rp.activations.*) of tensor x."""
    name = activation.name
    if type(activation) not in _BUILTIN_ACTIVATIONS:
        raise ExportError(f"activation {name!r} ({type(activation).__name__}) has no ONNX "
                          f"converter")
    out = f"{scope}{name}"
    simple = {"relu": "Relu", "tanh": "Tanh", "arctan": "Atan", "softplus": "Softplus"}
    if name == "linear":
        return Converted([], [], x)
    if name in simple:
        return Converted([helper.make_node(simple[name], [x], [out])], [], out)
    if name == "sigmoid":
        if activation.slope == 1.0:
            return Converted([helper.make_node("Sigmoid", [x], [out])], [], out)
        slope = _tensor(f"{scope}slope", activation.slope)
        return Converted([helper.make_node("Mul", [x, slope.name], [out + "_ax"]),
                          helper.make_node("Sigmoid", [out + "_ax"], [out])], [slope], out)
    if name == "softmax":
        return Converted([helper.make_node("Softmax", [x], [out], axis=-1)], [], out)
    if name == "leaky_relu":
        return Converted([helper.make_node("LeakyRelu", [x], [out], alpha=activation.alpha)],
                         [], out)
    if name == "elu":
        return Converted([helper.make_node("Elu", [x], [out], alpha=activation.alpha)], [], out)
    if name == "step":
        zero = _tensor(f"{scope}zero", 0.0)
        return Converted([helper.make_node("GreaterOrEqual", [x, zero.name], [out + "_ge"]),
                          helper.make_node("Cast", [out + "_ge"], [out], to=TensorProto.FLOAT)],
                         [zero], out)
    if name == "swish":
        return Converted([helper.make_node("Sigmoid", [x], [out + "_s"]),
                          helper.make_node("Mul", [x, out + "_s"], [out])], [], out)
    if name == "gelu":
        return _gelu_tanh(x, scope)
    raise ExportError(f"activation {name!r} ({type(activation).__name__}) has no ONNX "
                      f"converter")


def _then(first, second):
    """Two conversions in sequence, as one."""
    return Converted(first.nodes + second.nodes, first.initializers + second.initializers,
                     second.output)


def _transpose(x, perm, out):
    return helper.make_node("Transpose", [x], [out], perm=list(perm))


# ---------------------------------------------------------------- layers

def convert_dense(layer, inputs, scope):
    """y = act(x @ W + b): Gemm (W is (in, out), as ONNX's B without transB)."""
    x, = inputs
    w = _tensor(f"{scope}W", layer.params["W"])
    inits = [w]
    if layer.use_bias:
        b = _tensor(f"{scope}b", layer.params["b"])
        inits.append(b)
        node = helper.make_node("Gemm", [x, w.name, b.name], [f"{scope}z"])
    else:
        node = helper.make_node("MatMul", [x, w.name], [f"{scope}z"])
    return _then(Converted([node], inits, f"{scope}z"),
                 convert_activation_function(layer.activation, f"{scope}z", scope))


def convert_conv(layer, inputs, scope):
    """Conv1D / Conv2D: NHWC -> NCHW, Conv (+ bias), activation, NCHW -> NHWC."""
    x, = inputs
    rank = layer.rank
    to_first, to_last = (NHWC_TO_NCHW, NCHW_TO_NHWC) if rank == 2 else (NLC_TO_NCL, NLC_TO_NCL)
    # retroprop (kh, kw, C, F) / (k, C, F) -> ONNX (F, C, kh, kw) / (F, C, k)
    kernel = np.moveaxis(layer.params["W"], [-1, -2], [0, 1])
    w = _tensor(f"{scope}W", kernel)
    inits = [w]
    conv_inputs = [f"{scope}x_cf", w.name]
    if layer.use_bias:
        b = _tensor(f"{scope}b", layer.params["b"])
        inits.append(b)
        conv_inputs.append(b.name)
    top, bottom, left, right = layer._pads
    pads = [top, left, bottom, right] if rank == 2 else [left, right]
    nodes = [_transpose(x, to_first, f"{scope}x_cf"),
             helper.make_node("Conv", conv_inputs, [f"{scope}z_cf"],
                              kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
                              dilations=list(layer.dilation_rate), pads=pads)]
    conv = Converted(nodes, inits, f"{scope}z_cf")
    if layer.activation.name == "softmax":      # over the channels: apply it channels-last
        back = Converted([_transpose(conv.output, to_last, f"{scope}z")], [], f"{scope}z")
        return _then(_then(conv, back),
                     convert_activation_function(layer.activation, f"{scope}z", scope))
    # Elementwise activations do not care about the layout: apply them
    # channels-first, so the transpose back can cancel with the next layer's.
    act = convert_activation_function(layer.activation, conv.output, scope + "cf_")
    out = f"{scope}y"
    return _then(_then(conv, act), Converted([_transpose(act.output, to_last, out)], [], out))


def convert_pool(layer, inputs, scope):
    """MaxPool1D/2D, AvgPool1D/2D (padding cells excluded from averages, as ONNX's default)."""
    x, = inputs
    rank = layer.rank
    to_first, to_last = (NHWC_TO_NCHW, NCHW_TO_NHWC) if rank == 2 else (NLC_TO_NCL, NLC_TO_NCL)
    top, bottom, left, right = layer._pads
    pads = [top, left, bottom, right] if rank == 2 else [left, right]
    op = "MaxPool" if layer.mode == "max" else "AveragePool"
    attrs = dict(kernel_shape=list(layer.pool_size), strides=list(layer.strides), pads=pads)
    if op == "AveragePool":
        attrs["count_include_pad"] = 0
    nodes = [_transpose(x, to_first, f"{scope}x_cf"),
             helper.make_node(op, [f"{scope}x_cf"], [f"{scope}y_cf"], **attrs),
             _transpose(f"{scope}y_cf", to_last, f"{scope}y")]
    return Converted(nodes, [], f"{scope}y")


def convert_global_avg_pool(layer, inputs, scope):
    """(N, H, W, C) -> (N, C): GlobalAveragePool on NCHW, then Flatten."""
    x, = inputs
    nodes = [_transpose(x, NHWC_TO_NCHW, f"{scope}x_cf"),
             helper.make_node("GlobalAveragePool", [f"{scope}x_cf"], [f"{scope}pooled"]),
             helper.make_node("Flatten", [f"{scope}pooled"], [f"{scope}y"], axis=1)]
    return Converted(nodes, [], f"{scope}y")


def convert_batchnorm(layer, inputs, scope):
    """BatchNormalization at inference (moving statistics), channel axis moved to 1."""
    x, = inputs
    rank = len(layer.input_shape) + 1
    channels = layer.input_shape[layer._channel_axis - 1]
    gamma = layer.params.get("gamma", np.ones(channels))
    beta = layer.params.get("beta", np.zeros(channels))
    inits = [_tensor(f"{scope}{k}", v) for k, v in (
        ("gamma", gamma), ("beta", beta), ("mean", layer.state["moving_mean"]),
        ("var", layer.state["moving_variance"]))]
    axis = layer._channel_axis
    perm = [0, axis] + [i for i in range(1, rank) if i != axis]
    inverse = list(np.argsort(perm))
    nodes = []
    src = x
    if perm != list(range(rank)):
        nodes.append(_transpose(x, perm, f"{scope}x_cf"))
        src = f"{scope}x_cf"
    out = f"{scope}y_cf" if nodes else f"{scope}y"
    nodes.append(helper.make_node("BatchNormalization", [src] + [t.name for t in inits], [out],
                                  epsilon=layer.epsilon))
    if out != f"{scope}y":
        nodes.append(_transpose(out, inverse, f"{scope}y"))
    return Converted(nodes, inits, f"{scope}y")


def convert_identity(layer, inputs, scope):
    """Dropout, RandomFlip, RandomTranslation: the identity at inference (no node)."""
    x, = inputs
    return Converted([], [], x)


def convert_flatten(layer, inputs, scope):
    """Flatten(axis=1). The input is channels-last here, as in retroprop, so the order matches."""
    x, = inputs
    return Converted([helper.make_node("Flatten", [x], [f"{scope}y"], axis=1)], [], f"{scope}y")


def convert_activation_layer(layer, inputs, scope):
    x, = inputs
    return convert_activation_function(layer.activation, x, scope)


def convert_leaky_relu_layer(layer, inputs, scope):
    x, = inputs
    return Converted([helper.make_node("LeakyRelu", [x], [f"{scope}y"], alpha=layer.alpha)],
                     [], f"{scope}y")


def convert_elu_layer(layer, inputs, scope):
    x, = inputs
    return Converted([helper.make_node("Elu", [x], [f"{scope}y"], alpha=layer.alpha)],
                     [], f"{scope}y")


def convert_prelu(layer, inputs, scope):
    """PRelu with one slope per channel (the last axis broadcasts)."""
    x, = inputs
    slope = _tensor(f"{scope}alpha", layer.params["alpha"])
    return Converted([helper.make_node("PRelu", [x, slope.name], [f"{scope}y"])], [slope],
                     f"{scope}y")


def convert_rrelu(layer, inputs, scope):
    """At inference RReLU is a leaky ReLU with the mean slope."""
    x, = inputs
    alpha = (layer.lower + layer.upper) / 2.0
    return Converted([helper.make_node("LeakyRelu", [x], [f"{scope}y"], alpha=alpha)],
                     [], f"{scope}y")


def convert_random_crop(layer, inputs, scope):
    """At inference RandomCrop takes the centre window of the zero-padded image: Pad + Slice."""
    x, = inputs
    height, width, _ = layer.input_shape
    ph, pw = layer.padding
    top = (height + 2 * ph - layer.height) // 2
    left = (width + 2 * pw - layer.width) // 2
    nodes, inits, src = [], [], x
    if ph or pw:
        pads = _ints(f"{scope}pads", [0, ph, pw, 0, 0, ph, pw, 0])
        inits.append(pads)
        nodes.append(helper.make_node("Pad", [x, pads.name], [f"{scope}padded"]))
        src = f"{scope}padded"
    starts = _ints(f"{scope}starts", [top, left])
    ends = _ints(f"{scope}ends", [top + layer.height, left + layer.width])
    axes = _ints(f"{scope}axes", [1, 2])
    inits += [starts, ends, axes]
    nodes.append(helper.make_node("Slice", [src, starts.name, ends.name, axes.name],
                                  [f"{scope}y"]))
    return Converted(nodes, inits, f"{scope}y")


def convert_residual(layer, inputs, scope):
    """inner(x) + shortcut(x), then the block's activation; children converted by the table."""
    x, = inputs
    inner = _convert_chain(layer.inner, x, f"{scope}")
    if layer.shortcut is None:
        skip = Converted([], [], x)
    else:
        skip = convert_layer(layer.shortcut, [x], f"{scope}{layer.shortcut.name}/")
    add = helper.make_node("Add", [inner.output, skip.output], [f"{scope}sum"])
    result = Converted(inner.nodes + skip.nodes + [add], inner.initializers + skip.initializers,
                       f"{scope}sum")
    if layer._activation is not None:
        result = _then(result, convert_activation_function(layer._activation.activation,
                                                           result.output, scope))
    return result


#: Layer class -> converter. A graph model's merge layers (Add, Concatenate,
#: ...) are one entry each: a function of (layer, [input names], scope).
CONVERTERS = {
    L.Dense: convert_dense,
    L.Conv1D: convert_conv,
    L.Conv2D: convert_conv,
    L.MaxPool1D: convert_pool,
    L.MaxPool2D: convert_pool,
    L.AvgPool1D: convert_pool,
    L.AvgPool2D: convert_pool,
    L.GlobalAvgPool2D: convert_global_avg_pool,
    L.BatchNormalization: convert_batchnorm,
    L.Dropout: convert_identity,
    L.RandomFlip: convert_identity,
    L.RandomTranslation: convert_identity,
    L.RandomCrop: convert_random_crop,
    L.Flatten: convert_flatten,
    L.Activation: convert_activation_layer,
    L.LeakyReLU: convert_leaky_relu_layer,
    L.ELU: convert_elu_layer,
    L.PReLU: convert_prelu,
    L.RReLU: convert_rrelu,
    L.Residual: convert_residual,
}


def convert_layer(layer, inputs, scope):
    """Run the converter of ``layer``'s exact class (a subclass may compute otherwise)."""
    converter = CONVERTERS.get(type(layer))
    if converter is None:
        raise ExportError(f"layer {layer.name!r} ({type(layer).__name__}) has no ONNX form in "
                          f"this exporter; exportable layers: "
                          f"{', '.join(sorted(c.__name__ for c in CONVERTERS))}")
    return converter(layer, list(inputs), scope)


def _convert_chain(layers, x, scope):
    result = Converted([], [], x)
    for layer in layers:
        result = _then(result, convert_layer(layer, [result.output], f"{scope}{layer.name}/"))
    return result


# ---------------------------------------------------------------- graph clean-up

def _drop_cancelling_transposes(nodes, protected):
    """Remove Transpose pairs whose permutations compose to the identity.

    ``Transpose(p1)`` feeding only ``Transpose(p2)`` with p1 then p2 the
    identity: the second one's consumers read the first one's input instead.
    ``protected`` names (graph outputs) are never removed.
    """
    changed = True
    while changed:
        changed = False
        producers = {out: n for n in nodes for out in n.output}
        consumers = {}
        for n in nodes:
            for name in n.input:
                consumers.setdefault(name, []).append(n)
        for second in nodes:
            if second.op_type != "Transpose" or second.output[0] in protected:
                continue
            first = producers.get(second.input[0])
            if first is None or first.op_type != "Transpose" \
                    or len(consumers.get(first.output[0], [])) != 1 \
                    or first.output[0] in protected:
                continue
            p1 = list(helper.get_attribute_value(first.attribute[0]))
            p2 = list(helper.get_attribute_value(second.attribute[0]))
            if [p1[i] for i in p2] != list(range(len(p1))):
                continue
            source, target = first.input[0], second.output[0]
            for n in nodes:
                for i, name in enumerate(n.input):
                    if name == target:
                        n.input[i] = source
            nodes = [n for n in nodes if n is not first and n is not second]
            changed = True
            break
    return nodes


# ---------------------------------------------------------------- the model

def build_onnx_model(model, opset=OPSET, input_name="input", output_name="output",
                     batch_dim="N"):
    """The ``onnx.ModelProto`` of a built retroprop model (checked with onnx.checker)."""
    _require_onnx()
    if not getattr(model, "built", False):
        raise ValueError("the model is not built; build it (input_shape=...) before exporting")
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ExportError(f"cannot export {type(model).__name__}: this exporter reads a "
                          f"Sequential's layers")
    result = _convert_chain(layers, input_name, "")
    nodes = list(result.nodes)
    if result.output == input_name or not nodes:
        nodes.append(helper.make_node("Identity", [result.output], [output_name]))
    else:
        for n in nodes:        # the last tensor becomes the graph output
            for i, name in enumerate(n.output):
                if name == result.output:
                    n.output[i] = output_name
            for i, name in enumerate(n.input):
                if name == result.output:
                    n.input[i] = output_name
    nodes = _drop_cancelling_transposes(nodes, {output_name, input_name})
    shape_in = [batch_dim] + [int(s) for s in model.input_shape]
    shape_out = [batch_dim] + [int(s) for s in model.output_shape]
    graph = helper.make_graph(
        nodes, getattr(model, "name", "retroprop"),
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, shape_out)],
        initializer=_unique(result.initializers))
    from .. import __version__
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="retroprop", producer_version=__version__)
    proto.ir_version = min(proto.ir_version, 8)    # readable by older runtimes too
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _unique(initializers):
    seen, out = set(), []
    for t in initializers:
        if t.name not in seen:
            seen.add(t.name)
            out.append(t)
    return out


def to_onnx(model, path=None, opset=OPSET, input_name="input", output_name="output"):
    """Export ``model`` as ONNX, written to ``path`` when given (atomically); returns the proto.

    Raises :class:`ExportError` (a ValueError) naming the first layer or
    activation without an ONNX form, and MissingDependencyError without the
    ``onnx`` package.
    """
    proto = build_onnx_model(model, opset=opset, input_name=input_name,
                             output_name=output_name)
    if path is not None:
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(proto.SerializeToString())
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    return proto
