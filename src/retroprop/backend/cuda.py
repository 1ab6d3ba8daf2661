"""The CUDA backend: the operations of docs/BACKEND.md on an NVIDIA GPU.

Arrays are :class:`~retroprop.backend.device.DeviceArray` (device memory);
``to_device`` / ``DeviceArray.to_host`` move data, and everything else is
the :class:`~retroprop.backend.device.DeviceBackend` of the GPU driver
``retroprop._cuda`` (csrc/cuda/runtime.cu: cuBLAS/cuBLASLt GEMMs and the
kernels of csrc/cuda/bodies). See docs/CUDA.md.

Importing this module opens the GPU. Where that is impossible it raises
:class:`CudaUnavailableError`, once, with the reason: retroprop was built
without CUDA, the cuBLAS libraries cannot be loaded, there is no NVIDIA
driver, no GPU, or a driver too old for the runtime.
"""
from .device import (ACTIVATION_DEFAULT_PARAMS, COL_WORKSPACE_ELEMENTS,  # noqa: F401
                     ELEMENTWISE_ACTIVATIONS, FUSED_ACTIVATIONS, INPUT_DERIVATIVE_ACTIVATIONS,
                     LOSS_KINDS, BatchUploader, DeviceArray, DeviceBackend)


class CudaUnavailableError(RuntimeError):
    """The CUDA backend cannot run here; the message says why."""


def _open():
    try:
        from .. import _cuda
    except ImportError as exc:
        if "_cuda" in str(exc) and "cannot import name" in str(exc):
            raise CudaUnavailableError(
                "the CUDA backend is not available: retroprop was built without CUDA. "
                "Rebuild with `pip install -Ccmake.define.RETROPROP_CUDA=ON .` on a machine "
                "with nvcc and `pip install nvidia-cublas nvidia-cuda-runtime` "
                "(docs/CUDA.md)") from None
        raise CudaUnavailableError(
            f"the CUDA backend is not available: its extension failed to load ({exc}); "
            "the cuBLAS libraries come from `pip install nvidia-cublas` (docs/CUDA.md)") from None
    try:
        return DeviceBackend(_cuda, name="cuda")
    except RuntimeError as exc:
        raise CudaUnavailableError(f"the CUDA backend is not available: {exc}") from None


_backend = _open()

#: The DeviceBackend behind this module's functions (its driver, properties,
#: set_max_blocks, ...).
device_backend = _backend

# The module-level functions of the backend interface (docs/BACKEND.md).
empty = _backend.empty
zeros = _backend.zeros
to_device = _backend.to_device
to_host = _backend.to_host
copy = _backend.copy
im2col = _backend.im2col
col2im = _backend.col2im
conv2d_output_hw = _backend.conv2d_output_hw
pool2d_output_hw = _backend.pool2d_output_hw
conv2d_workspace_size = _backend.conv2d_workspace_size
synchronize = _backend.synchronize
batch_uploader = _backend.batch_uploader
set_num_threads = _backend.set_num_threads
get_num_threads = _backend.get_num_threads
backend_info = _backend.backend_info
gemm = _backend.gemm
dense_forward = _backend.dense_forward
dense_forward_fused = _backend.dense_forward_fused
dense_forward_relu_mask = _backend.dense_forward_relu_mask
dense_backward_drelu = _backend.dense_backward_drelu
dense_backward = _backend.dense_backward
activation_forward = _backend.activation_forward
activation_backward = _backend.activation_backward
softmax = _backend.softmax
axpby = _backend.axpby
add_penalty_gradient = _backend.add_penalty_gradient
softmax_cross_entropy = _backend.softmax_cross_entropy
loss = _backend.loss
column_sums = _backend.column_sums
batchnorm_stats = _backend.batchnorm_stats
batchnorm_apply = _backend.batchnorm_apply
batchnorm_backward = _backend.batchnorm_backward
conv2d_forward = _backend.conv2d_forward
conv2d_backward = _backend.conv2d_backward
maxpool2d_forward = _backend.maxpool2d_forward
maxpool2d_backward = _backend.maxpool2d_backward
avgpool2d_forward = _backend.avgpool2d_forward
avgpool2d_backward = _backend.avgpool2d_backward
optimizer_step = _backend.optimizer_step
sgd_step = _backend.sgd_step
adam_step = _backend.adam_step
rmsprop_step = _backend.rmsprop_step
adagrad_step = _backend.adagrad_step
find_nonfinite = _backend.find_nonfinite
gather_rows = _backend.gather_rows
dropout_forward = _backend.dropout_forward
dropout_backward = _backend.dropout_backward
