"""Elementwise and merge operations of graph models, in NumPy.

The merge layers (layers/merge.py), ``Reshape`` and the ops of
:mod:`retroprop.ops` compute through these functions, which both backends
export (``backend.add`` ...): each is one or two NumPy expressions over
whole arrays, memory-bound, where a C kernel would gain little. (In a
planned training step the C step program has its own loops for ``add`` and
``concatenate``, see csrc/cpu/plan.c.)

Every function writes into the caller's ``out`` array (C-contiguous, the
inputs' dtype) and returns it; inputs are arrays of one dtype, float32 or
float64, of equal shapes unless said otherwise.
"""
import numpy as np

UNARY_OPS = ("negative", "exp", "log", "sin", "cos", "add_scalar", "rsub_scalar", "mul_scalar",
             "div_scalar", "rdiv_scalar", "max_scalar")
BINARY_OPS = ("add", "subtract", "multiply", "divide")


def add(a, b, out):
    """out = a + b (out may be a or b)."""
    return np.add(a, b, out=out)


def add_n(xs, out):
    """out = xs[0] + xs[1] + ..., summed left to right."""
    np.add(xs[0], xs[1], out=out)
    for x in xs[2:]:
        np.add(out, x, out=out)
    return out


def unary_forward(op, x, out, param=None):
    """out = op(x) elementwise; the *_scalar ops use the constant ``param`` (c):
    add_scalar x + c, rsub_scalar c - x, mul_scalar c x, div_scalar x / c,
    rdiv_scalar c / x, max_scalar max(x, c)."""
    if op == "negative":
        return np.negative(x, out=out)
    if op == "exp":
        return np.exp(x, out=out)
    if op == "log":
        return np.log(x, out=out)
    if op == "sin":
        return np.sin(x, out=out)
    if op == "cos":
        return np.cos(x, out=out)
    c = x.dtype.type(param) if param is not None else None
    if op == "add_scalar":
        return np.add(x, c, out=out)
    if op == "rsub_scalar":
        return np.subtract(c, x, out=out)
    if op == "mul_scalar":
        return np.multiply(x, c, out=out)
    if op == "div_scalar":
        return np.divide(x, c, out=out)
    if op == "rdiv_scalar":
        return np.divide(c, x, out=out)
    if op == "max_scalar":
        return np.maximum(x, c, out=out)
    raise ValueError(f"unary op must be one of {UNARY_OPS}, got {op!r}")


def unary_backward(op, x, y, dy, out, param=None):
    """out = dy * op'(x), from the forward's input x and output y."""
    if op == "negative":
        return np.negative(dy, out=out)
    if op == "exp":                      # (e^x)' = e^x = y
        return np.multiply(dy, y, out=out)
    if op == "log":                      # (log x)' = 1 / x
        return np.divide(dy, x, out=out)
    if op == "sin":                      # sin' = cos
        np.cos(x, out=out)
        return np.multiply(out, dy, out=out)
    if op == "cos":                      # cos' = -sin
        np.sin(x, out=out)
        np.negative(out, out=out)
        return np.multiply(out, dy, out=out)
    c = x.dtype.type(param) if param is not None else None
    if op == "add_scalar":
        np.copyto(out, dy)
        return out
    if op == "rsub_scalar":
        return np.negative(dy, out=out)
    if op == "mul_scalar":
        return np.multiply(dy, c, out=out)
    if op == "div_scalar":
        return np.divide(dy, c, out=out)
    if op == "rdiv_scalar":              # (c / x)' = -c / x^2 = -y / x
        np.divide(y, x, out=out)
        np.negative(out, out=out)
        return np.multiply(out, dy, out=out)
    if op == "max_scalar":               # the gradient goes to x where x >= c (ties too)
        return np.multiply(dy, x >= c, out=out)
    raise ValueError(f"unary op must be one of {UNARY_OPS}, got {op!r}")


def binary_forward(op, a, b, out):
    """out = a op b for op in add, subtract, multiply, divide."""
    if op == "add":
        return np.add(a, b, out=out)
    if op == "subtract":
        return np.subtract(a, b, out=out)
    if op == "multiply":
        return np.multiply(a, b, out=out)
    if op == "divide":
        return np.divide(a, b, out=out)
    raise ValueError(f"binary op must be one of {BINARY_OPS}, got {op!r}")


def binary_backward(op, a, b, dy, da, db):
    """dL/da into da and dL/db into db (either may be None) of ``binary_forward``."""
    if op == "add":
        if da is not None:
            np.copyto(da, dy)
        if db is not None:
            np.copyto(db, dy)
    elif op == "subtract":
        if da is not None:
            np.copyto(da, dy)
        if db is not None:
            np.negative(dy, out=db)
    elif op == "multiply":
        if da is not None:
            np.multiply(dy, b, out=da)
        if db is not None:
            np.multiply(dy, a, out=db)
    elif op == "divide":                 # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        if da is not None:
            np.divide(dy, b, out=da)
        if db is not None:
            np.divide(a, b, out=db)
            np.divide(db, b, out=db)
            np.negative(db, out=db)
            np.multiply(db, dy, out=db)
    else:
        raise ValueError(f"binary op must be one of {BINARY_OPS}, got {op!r}")
    return da, db


def product_except(xs, i, out):
    """out = the product of every array of xs but xs[i] (ones when xs has one array)."""
    others = [x for j, x in enumerate(xs) if j != i]
    if not others:
        out.fill(1)
        return out
    np.copyto(out, others[0])
    for x in others[1:]:
        np.multiply(out, x, out=out)
    return out


def maximum_forward(xs, out, argmax):
    """out = the elementwise maximum of xs; argmax (int8 or int32, out's shape)
    receives the index of the array it came from (the first on ties; a NaN
    wins, as in numpy.maximum)."""
    np.copyto(out, xs[0])
    argmax.fill(0)
    for i, x in enumerate(xs[1:], start=1):
        # x wins where it is larger, or NaN where the current maximum is not.
        wins = (x > out) | (np.isnan(x) & ~np.isnan(out))
        np.copyto(out, x, where=wins)
        argmax[wins] = i
    return out


def maximum_backward(argmax, dy, i, out):
    """out = dy where the maximum came from input i, 0 elsewhere."""
    return np.multiply(dy, argmax == i, out=out)


def concatenate(xs, axis, out):
    """out = xs joined along ``axis`` (of the full arrays, batch axis 0)."""
    return np.concatenate(xs, axis=axis, out=out)


def split(dy, axis, widths, outs):
    """The inverse of concatenate: consecutive slices of dy along ``axis``, of
    the given widths, copied into outs (a None entry: that slice is skipped)."""
    start = 0
    index = [slice(None)] * dy.ndim
    for width, out_arr in zip(widths, outs):
        if out_arr is not None:
            index[axis] = slice(start, start + width)
            np.copyto(out_arr, dy[tuple(index)])
        start += width
    return outs


def reduce_sum(x, axes, out):
    """out = x summed over ``axes`` (a tuple of axes of x, not 0), keeping them
    as size-1 axes when out has x's number of dimensions."""
    total = np.sum(x, axis=axes, keepdims=out.ndim == x.ndim)
    np.copyto(out, total.reshape(out.shape))
    return out


def broadcast_to(dy, shape_kept, out, scale=1.0):
    """out = dy * scale, broadcast back over the axes a reduction removed;
    ``shape_kept`` is dy's shape with those axes as size 1."""
    np.multiply(dy.reshape(shape_kept), out.dtype.type(scale), out=out)
    return out


def batch_matmul(a, b, out):
    """out[n] = a[n] @ b[n] for every sample n (NumPy's matmul broadcasting)."""
    return np.matmul(a, b, out=out)


def batch_matmul_backward(a, b, dy, da, db):
    """da = dy @ b^T, db = a^T @ dy per sample (either may be None)."""
    if da is not None:
        np.matmul(dy, np.swapaxes(b, -1, -2), out=da)
    if db is not None:
        np.matmul(np.swapaxes(a, -1, -2), dy, out=db)
    return da, db
