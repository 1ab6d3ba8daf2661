"""Interoperability: ONNX export and PyTorch weights in and out.

Both need optional packages, imported only when a function here is called:

* :func:`to_onnx` (``onnx``; ``pip install 'retroprop[onnx]'``): write a
  trained model as an ONNX graph, for onnxruntime and other runtimes.
* :func:`from_torch` / :func:`to_torch` (``torch``): copy weights between a
  retroprop model and PyTorch modules, converting layouts (NHWC and NCHW,
  (in, out) and (out, in) kernels).

See docs/INTEROP.md.
"""


class MissingDependencyError(ImportError):
    """An optional package this function needs is not installed (the message says which)."""


def to_onnx(model, path=None, **kwargs):
    """Export ``model`` to ONNX (see :func:`retroprop.interop.onnx.to_onnx`)."""
    from .onnx import to_onnx as export
    return export(model, path, **kwargs)


def from_torch(torch_module, model):
    """Copy a PyTorch module's weights into ``model`` (see :mod:`retroprop.interop.pytorch`)."""
    from .pytorch import from_torch as copy_in
    return copy_in(torch_module, model)


def to_torch(model):
    """A PyTorch ``nn.Sequential`` with ``model``'s weights (:mod:`retroprop.interop.pytorch`)."""
    from .pytorch import to_torch as copy_out
    return copy_out(model)


__all__ = ["to_onnx", "from_torch", "to_torch", "MissingDependencyError"]
