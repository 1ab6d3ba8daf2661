"""The device backend: arrays that live in device memory and the operations
of docs/BACKEND.md on them, over a device driver module.

The driver is ``retroprop._cuda`` (the GPU, built with RETROPROP_CUDA; used
by backend/cuda.py) or ``retroprop._cuda_emu`` (the host emulator of the
same C operations and kernel bodies, always built; used by the tests).
Both come from one Cython source (_device.pyx) and expose the same
functions, so every line of this module runs in the CPU test suite too.

Memory: a :class:`DeviceArray` owns (or views) one contiguous block of
device memory; parameters, gradients, optimizer state and buffers stay in
device memory as long as the caller keeps them. Data moves only when asked:
``to_device`` / ``DeviceArray.to_host`` / :class:`BatchUploader` (pinned
staging buffers and a copy stream, so the next batch is copied while the
current one computes). Scalars the operations produce (a loss, the index of
the first bad parameter) stay on the device as 0-d DeviceArrays until
``float()`` / ``int()`` reads them.

Arguments: DeviceArrays of float32 or float64, one dtype per call; a NumPy
array given as an INPUT is copied to the device first (convenient for
targets and tests; a training loop passes DeviceArrays). Outputs are
DeviceArrays, allocated when not given.
"""
import ctypes
import threading

import numpy as np

FUSED_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "step", "leaky_relu", "elu")
INPUT_DERIVATIVE_ACTIVATIONS = ("arctan", "softplus", "gelu", "swish")
ELEMENTWISE_ACTIVATIONS = FUSED_ACTIVATIONS + INPUT_DERIVATIVE_ACTIVATIONS
ACTIVATION_DEFAULT_PARAMS = {"sigmoid": 1.0, "leaky_relu": 0.01, "elu": 1.0}
# rp_act (csrc/include/retroprop/act.h)
_ACT_CODES = {name: i for i, name in enumerate(ELEMENTWISE_ACTIVATIONS)}
# RP_LOSS_* (csrc/cuda/bodies/loss.inc)
LOSS_KINDS = {"softmax_cross_entropy": 0, "crossentropy_probs": 1, "mse": 2, "mae": 3,
              "bce_probs": 4, "bce_logits": 5, "bce_sigmoid": 6, "hinge": 7}
_REAL = (np.dtype(np.float32), np.dtype(np.float64))
_STEP_MODES = ("apply", "check", "check_apply")
_MODE_CODES = {"apply": 0, "check": 1, "check_apply": 2}
# Upper bound on one im2col chunk, in elements (256 MiB of float32): larger
# batches are processed a chunk of images at a time.
COL_WORKSPACE_ELEMENTS = 1 << 26


def _dtype_code(dtype):
    return 1 if dtype == np.float64 else 0


class DeviceArray:
    """A C-contiguous array in device memory: ``ptr`` (an int), ``shape``,
    ``dtype``. Made by a :class:`DeviceBackend` (``empty``, ``to_device``);
    freed when the last reference (including views) goes away."""

    __slots__ = ("backend", "ptr", "shape", "dtype", "_base", "_owned", "__weakref__")

    def __init__(self, backend, ptr, shape, dtype, base=None, owned=True):
        self.backend = backend
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._base = base
        self._owned = owned

    @property
    def size(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def itemsize(self):
        return self.dtype.itemsize

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, ptr={self.ptr:#x})"

    def reshape(self, *shape):
        """A view of the same memory with another shape (one -1 allowed)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(int(s) for s in shape)
        if shape.count(-1) > 1:
            raise ValueError("reshape: at most one -1")
        if -1 in shape:
            known = 1
            for s in shape:
                if s != -1:
                    known *= s
            if known == 0 or self.size % known:
                raise ValueError(f"reshape: cannot reshape {self.shape} into {tuple(shape)}")
            shape[shape.index(-1)] = self.size // known
        n = 1
        for s in shape:
            n *= s
        if n != self.size:
            raise ValueError(f"reshape: cannot reshape {self.shape} into {tuple(shape)}")
        return DeviceArray(self.backend, self.ptr, shape, self.dtype, base=self, owned=False)

    def rows(self, start, stop):
        """The contiguous view of rows [start, stop) along the first axis."""
        if not self.shape:
            raise TypeError("rows() of a 0-d DeviceArray")
        start, stop, _ = slice(start, stop).indices(self.shape[0])
        stop = max(stop, start)
        row = self.nbytes // self.shape[0] if self.shape[0] else 0
        return DeviceArray(self.backend, self.ptr + start * row, (stop - start,) + self.shape[1:],
                           self.dtype, base=self, owned=False)

    def to_host(self, out=None):
        """The contents as a NumPy array (waits for the queued work)."""
        if out is None:
            out = np.empty(self.shape, dtype=self.dtype)
        elif (not isinstance(out, np.ndarray) or out.shape != self.shape
              or out.dtype != self.dtype or not out.flags.c_contiguous):
            raise ValueError(f"to_host: out must be a C-contiguous {self.dtype} array of "
                             f"shape {self.shape}")
        self.backend.driver.download(out.ctypes.data, self.ptr, self.nbytes)
        return out

    def __array__(self, dtype=None, copy=None):
        host = self.to_host()
        return host if dtype is None else host.astype(dtype)

    def __float__(self):
        if self.size != 1:
            raise TypeError(f"float() of a DeviceArray of shape {self.shape}")
        return float(self.to_host().reshape(()))

    def __int__(self):
        if self.size != 1:
            raise TypeError(f"int() of a DeviceArray of shape {self.shape}")
        return int(self.to_host().reshape(()))

    def __del__(self):
        if self._owned and self.ptr:
            try:
                self.backend.driver.free(self.ptr)
            except Exception:   # interpreter shutdown: the driver may be gone
                pass
            self.ptr = 0


class BatchUploader:
    """Copies host batches to the device through pinned staging buffers on
    the copy stream, two slots in turn: the host fills one slot while the
    device may still compute on the other, and the compute stream waits for
    each copy before using it. ``upload(x)`` returns a DeviceArray valid
    until the upload after next."""

    def __init__(self, backend, slots=2):
        self.backend = backend
        self._slots = [dict(host=None, host_bytes=0, device={}, ready=None, done=None)
                       for _ in range(slots)]
        self._next = 0
        self._previous = None

    def upload(self, x):
        x = np.ascontiguousarray(x)
        drv = self.backend.driver
        if self._previous is not None:
            # the work queued so far is all that can read the previous slot
            drv.event_record(self._previous["done"])
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot["ready"] is None:
            slot["ready"] = drv.event_create()
            slot["done"] = drv.event_create()
        else:
            drv.event_wait(slot["done"])   # the device is done with this slot's last batch
        if slot["host_bytes"] < x.nbytes:
            if slot["host"]:
                drv.host_free(slot["host"])
            slot["host"] = drv.host_malloc(max(x.nbytes, 1))
            slot["host_bytes"] = max(x.nbytes, 1)
        key = (x.shape, x.dtype.str)
        dev = slot["device"].get(key)
        if dev is None:
            slot["device"].clear()
            dev = slot["device"][key] = self.backend.empty(x.shape, x.dtype)
            # memory from the compute stream's pool: let its allocation finish
            # before the copy stream writes it (a new shape is rare)
            drv.synchronize()
        ctypes.memmove(slot["host"], x.ctypes.data, x.nbytes)
        drv.upload_async(dev.ptr, slot["host"], x.nbytes, slot["ready"])
        self._previous = slot
        return dev

    def close(self):
        drv = self.backend.driver
        drv.synchronize()
        for slot in self._slots:
            if slot["host"]:
                drv.host_free(slot["host"])
            for event in (slot["ready"], slot["done"]):
                if event:
                    drv.event_destroy(event)
            slot.update(host=None, host_bytes=0, device={}, ready=None, done=None)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _int_tuple(value, length, name, minimum):
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        items = ()
    if len(items) != length or min(items) < minimum:
        raise ValueError(f"{name}: expected {length} integers >= {minimum}, got {value!r}")
    return items


def conv2d_output_hw(h, w, kernel_hw, stride=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0)):
    """(OH, OW) of a convolution; values < 1 mean the kernel does not fit."""
    top, bottom, left, right = padding
    eff_kh = (kernel_hw[0] - 1) * dilation[0] + 1
    eff_kw = (kernel_hw[1] - 1) * dilation[1] + 1
    return ((h + top + bottom - eff_kh) // stride[0] + 1,
            (w + left + right - eff_kw) // stride[1] + 1)


def pool2d_output_hw(h, w, pool_size, stride, padding=(0, 0, 0, 0)):
    top, bottom, left, right = padding
    return ((h + top + bottom - pool_size[0]) // stride[0] + 1,
            (w + left + right - pool_size[1]) // stride[1] + 1)


def _pointwise(w_shape, stride, padding):
    return w_shape[0] == 1 and w_shape[1] == 1 and tuple(stride) == (1, 1) \
        and tuple(padding) == (0, 0, 0, 0)


def _col_chunk(x_shape, w_shape, oh, ow):
    """Images per im2col chunk: whole images, at most COL_WORKSPACE_ELEMENTS."""
    per_image = max(oh, 1) * max(ow, 1) * w_shape[0] * w_shape[1] * w_shape[2]
    return max(1, min(max(x_shape[0], 1), COL_WORKSPACE_ELEMENTS // per_image))


def conv2d_workspace_size(x_shape, w_shape, stride=(1, 1), dilation=(1, 1),
                          padding=(0, 0, 0, 0), backward=True):
    """Elements of device workspace a convolution needs: the column matrix of
    one chunk (none when pointwise), plus dz (N*OH*OW*F) when backward."""
    oh, ow = conv2d_output_hw(x_shape[1], x_shape[2], w_shape[:2], stride, dilation, padding)
    col = 0
    if not _pointwise(w_shape, stride, padding):
        col = _col_chunk(x_shape, w_shape, oh, ow) * oh * ow * w_shape[0] * w_shape[1] * w_shape[2]
    return col + (x_shape[0] * oh * ow * w_shape[3] if backward else 0)


class DeviceBackend:
    """The operations of docs/BACKEND.md on DeviceArrays, over ``driver``
    (``retroprop._cuda`` or ``retroprop._cuda_emu``). Calls are serialised
    by a lock: the driver has one compute stream and shared scratch."""

    FUSED_ACTIVATIONS = FUSED_ACTIVATIONS
    INPUT_DERIVATIVE_ACTIVATIONS = INPUT_DERIVATIVE_ACTIVATIONS
    ELEMENTWISE_ACTIVATIONS = ELEMENTWISE_ACTIVATIONS
    ACTIVATION_DEFAULT_PARAMS = ACTIVATION_DEFAULT_PARAMS

    def __init__(self, driver, name="cuda"):
        self.driver = driver
        self.name = name
        self._lock = threading.RLock()
        self._workspaces = {}
        self._segment_tables = {}
        status, message = driver.init()
        if status != 0:
            raise RuntimeError(message)
        self.properties = driver.properties()

    # ------------------------------------------------------------ memory

    def empty(self, shape, dtype=np.float32):
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"empty: negative dimension in {shape}")
        dtype = np.dtype(dtype)
        n = 1
        for s in shape:
            n *= s
        return DeviceArray(self, self.driver.malloc(n * dtype.itemsize), shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        out = self.empty(shape, dtype)
        self.driver.memset(out.ptr, 0, out.nbytes)
        return out

    def to_device(self, x, dtype=None, out=None):
        """A device copy of the host array x (C-contiguous; dtype converted when given)."""
        x = np.ascontiguousarray(x, dtype=dtype)
        if out is None:
            out = self.empty(x.shape, x.dtype)
        elif out.shape != x.shape or out.dtype != x.dtype:
            raise ValueError(f"to_device: out is {out.dtype} {out.shape}, x is {x.dtype} {x.shape}")
        self.driver.upload(out.ptr, x.ctypes.data, x.nbytes)
        return out

    def to_host(self, x):
        return x.to_host() if isinstance(x, DeviceArray) else np.asarray(x)

    def copy(self, x, out=None):
        x = self._input(x, "x", any_dtype=True)
        out = self._output(out, "out", x.shape, x.dtype)
        self.driver.copy(out.ptr, x.ptr, x.nbytes)
        return out

    def synchronize(self):
        self.driver.synchronize()

    def batch_uploader(self, slots=2):
        return BatchUploader(self, slots)

    def set_max_blocks(self, max_blocks):
        """The largest grid of the elementwise launches (tests: small, to run
        the grid-stride path on small arrays)."""
        self.driver.set_max_blocks(int(max_blocks))

    # ------------------------------------------------------------ checks

    def _input(self, arr, name, dtype=None, any_dtype=False):
        if isinstance(arr, DeviceArray):
            if arr.backend is not self:
                raise ValueError(f"{name}: the array belongs to another device backend")
        elif isinstance(arr, np.ndarray):
            arr = self.to_device(arr)
        else:
            raise TypeError(f"{name}: expected a DeviceArray or numpy.ndarray, "
                            f"got {type(arr).__name__}")
        if not any_dtype and arr.dtype not in _REAL:
            raise TypeError(f"{name}: expected dtype float32 or float64, got {arr.dtype}")
        if dtype is not None and arr.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {arr.dtype}")
        return arr

    def _optional(self, arr, name, dtype, shape=None):
        if arr is None:
            return None
        arr = self._input(arr, name, dtype)
        if shape is not None and arr.shape != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
        return arr

    def _output(self, arr, name, shape, dtype):
        if arr is None:
            return self.empty(shape, dtype)
        if not isinstance(arr, DeviceArray) or arr.backend is not self:
            raise TypeError(f"{name}: outputs must be DeviceArrays of this backend, "
                            f"got {type(arr).__name__}")
        if arr.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {arr.dtype}")
        if arr.shape != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
        return arr

    def _workspace(self, count, dtype, tag):
        """A device scratch array of at least ``count`` elements, kept per
        (tag, dtype) and grown when needed: steady-state steps allocate nothing."""
        key = (tag, np.dtype(dtype).str)
        buf = self._workspaces.get(key)
        if buf is None or buf.size < count:
            buf = self._workspaces[key] = self.empty((max(count, 1),), dtype)
        return buf

    @staticmethod
    def _act(name, param, allowed):
        if name is None:
            name = "linear"
        if name not in allowed:
            raise ValueError(f"activation: expected one of {allowed}, got {name!r}")
        code = _ACT_CODES[name]
        if param is None:
            return code, ACTIVATION_DEFAULT_PARAMS.get(name, 0.0)
        p = float(param)
        if not np.isfinite(p):
            raise ValueError(f"{name}: parameter must be finite, got {param!r}")
        if name == "sigmoid" and not p > 0.0:
            raise ValueError(f"sigmoid: slope must be > 0, got {param!r}")
        if name in ("leaky_relu", "elu") and p < 0.0:
            raise ValueError(f"{name}: alpha must be >= 0, got {param!r}")
        return code, p

    # ------------------------------------------------------------ runtime

    def set_num_threads(self, n):
        from . import get_backend
        get_backend("cpu").set_num_threads(n)

    def get_num_threads(self):
        from . import get_backend
        return get_backend("cpu").get_num_threads()

    def backend_info(self):
        p = self.properties
        cublas = p["cublas_version"]
        return {
            "backend": self.name,
            "cuda": not p["emulated"],
            "emulated": p["emulated"],
            "device": p["name"],
            "compute_capability": "%d.%d" % p["compute_capability"],
            "multiprocessors": p["multiprocessors"],
            "total_memory": p["total_memory"],
            "cuda_runtime": "%d.%d" % (p["runtime_version"] // 1000,
                                       p["runtime_version"] % 1000 // 10),
            "cuda_driver": "%d.%d" % (p["driver_version"] // 1000,
                                      p["driver_version"] % 1000 // 10),
            "cublas": (None if not cublas else "%d.%d.%d" % (cublas // 10000,
                                                             cublas % 10000 // 100, cublas % 100)),
        }

    # ------------------------------------------------------------ GEMM and dense

    def gemm(self, a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        a = self._input(a, "a")
        b = self._input(b, "b", a.dtype)
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"gemm: expected 2-D a and b, got shapes {a.shape} and {b.shape}")
        m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if k != kb:
            raise ValueError(f"gemm: inner dimensions differ: op(a) {(m, k)}, op(b) {(kb, n)}")
        if out is None and beta != 0.0:
            raise ValueError("gemm: beta != 0 needs an out array to accumulate into")
        out = self._output(out, "out", (m, n), a.dtype)
        with self._lock:
            self.driver.gemm(_dtype_code(a.dtype), bool(trans_a), bool(trans_b), m, n, k,
                             float(alpha), a.ptr, b.ptr, float(beta), out.ptr)
        return out

    def dense_forward(self, x, w, b, activation, out=None, *, param=None, logits=None):
        x = self._input(x, "x")
        w = self._input(w, "w", x.dtype)
        if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
            raise ValueError(f"dense_forward: x (N, K) and w (K, M) expected, got shapes "
                             f"{x.shape} and {w.shape}")
        n, k = x.shape
        m = w.shape[1]
        b = self._optional(b, "b", x.dtype, (m,))
        out = self._output(out, "out", (n, m), x.dtype)
        bp = b.ptr if b is not None else 0
        if activation == "softmax":
            logits = self._output(logits, "logits", (n, m), x.dtype)
            with self._lock:
                self.driver.dense_forward(_dtype_code(x.dtype), n, k, m, x.ptr, w.ptr, bp,
                                          _ACT_CODES["linear"], 0.0, logits.ptr)
                self.driver.softmax(_dtype_code(x.dtype), n, m, logits.ptr, out.ptr)
            return out
        code, p = self._act(activation, param, FUSED_ACTIVATIONS)
        with self._lock:
            self.driver.dense_forward(_dtype_code(x.dtype), n, k, m, x.ptr, w.ptr, bp, code, p,
                                      out.ptr)
        return out

    def dense_forward_fused(self, x, w, b, activation, out=None, *, param=None):
        """dense_forward that also says whether a cuBLASLt epilogue did the bias
        and activation (True) or the GEMM + fused elementwise kernel (False)."""
        x = self._input(x, "x")
        w = self._input(w, "w", x.dtype)
        n, k = x.shape
        m = w.shape[1]
        b = self._optional(b, "b", x.dtype, (m,))
        out = self._output(out, "out", (n, m), x.dtype)
        code, p = self._act(activation, param, ELEMENTWISE_ACTIVATIONS)
        with self._lock:
            fused = self.driver.dense_forward(_dtype_code(x.dtype), n, k, m, x.ptr, w.ptr,
                                              b.ptr if b is not None else 0, code, p, out.ptr)
        return out, fused

    def dense_forward_relu_mask(self, x, w, b, out=None):
        """(out, mask): out = relu(x @ w + b) and, where cuBLASLt's RELU_AUX_BIAS
        epilogue is available, relu's bit mask for dense_backward_drelu (a uint8
        DeviceArray); mask is None otherwise (out computed by dense_forward)."""
        x = self._input(x, "x")
        w = self._input(w, "w", x.dtype)
        n, k = x.shape
        m = w.shape[1]
        b = self._optional(b, "b", x.dtype, (m,))
        out = self._output(out, "out", (n, m), x.dtype)
        if b is not None:
            mask = self.empty((self.driver.relu_mask_bytes(n, m),), np.uint8)
            with self._lock:
                if self.driver.dense_forward_relu_mask(_dtype_code(x.dtype), n, k, m, x.ptr,
                                                       w.ptr, b.ptr, out.ptr, mask.ptr):
                    return out, mask
        self.dense_forward(x, w, b, "relu", out=out)
        return out, None

    def dense_backward_drelu(self, dz, w, y_prev, mask, dz_prev=None, db_prev=None):
        """Into the layer below a Dense layer (weights w, output gradient dz (n, m)),
        when that layer is a relu Dense layer with output y_prev (n, k):
        dz_prev = (dz @ w^T) * [y_prev > 0] and db_prev = its column sums. One
        cuBLASLt DRELU_BGRAD GEMM when mask (from dense_forward_relu_mask) is
        given and the epilogue is available; else the GEMM, the relu backward
        and the column sums. Returns (dz_prev, db_prev)."""
        dz = self._input(dz, "dz")
        w = self._input(w, "w", dz.dtype)
        y_prev = self._input(y_prev, "y_prev", dz.dtype)
        n, m = dz.shape
        k = w.shape[0]
        if w.shape != (k, m) or y_prev.shape != (n, k):
            raise ValueError(f"dense_backward_drelu: dz {dz.shape}, w {w.shape} and y_prev "
                             f"{y_prev.shape} do not chain")
        dz_prev = self._output(dz_prev, "dz_prev", (n, k), dz.dtype)
        db_prev = self._output(db_prev, "db_prev", (k,), dz.dtype)
        if mask is not None:
            with self._lock:
                if self.driver.dense_dx_drelu_bgrad(_dtype_code(dz.dtype), n, k, m, dz.ptr, w.ptr,
                                                    mask.ptr, dz_prev.ptr, db_prev.ptr):
                    return dz_prev, db_prev
        self.gemm(dz, w, dz_prev, trans_b=True)
        self.activation_backward("relu", y_prev, dz_prev, out=dz_prev)
        self.column_sums(dz_prev, out=db_prev)
        return dz_prev, db_prev

    def dense_backward(self, x, w, y, dy, activation, dw, db=None, dx=None, *, param=None):
        x = self._input(x, "x")
        w = self._input(w, "w", x.dtype)
        y = self._input(y, "y", x.dtype)
        dy = self._input(dy, "dy", x.dtype)
        if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
            raise ValueError(f"dense_backward: x (N, K) and w (K, M) expected, got shapes "
                             f"{x.shape} and {w.shape}")
        n, k = x.shape
        m = w.shape[1]
        for arr, name in ((y, "y"), (dy, "dy")):
            if arr.shape != (n, m):
                raise ValueError(f"{name}: expected shape {(n, m)}, got {arr.shape}")
        dw = self._output(dw, "dw", (k, m), x.dtype)
        if db is not None:
            db = self._output(db, "db", (m,), x.dtype)
        if dx is not None:
            dx = self._output(dx, "dx", (n, k), x.dtype)
        code, p = self._act(activation, param, FUSED_ACTIVATIONS)
        dz = self._workspace(n * m, x.dtype, "dz")
        with self._lock:
            self.driver.dense_backward(_dtype_code(x.dtype), n, k, m, x.ptr, w.ptr, y.ptr,
                                       dy.ptr, code, p, dz.ptr, dw.ptr,
                                       db.ptr if db is not None else 0,
                                       dx.ptr if dx is not None else 0)
        return dx

    # ------------------------------------------------------------ elementwise and rows

    def activation_forward(self, name, x, out=None, *, param=None):
        x = self._input(x, "x")
        code, p = self._act(name, param, ELEMENTWISE_ACTIVATIONS)
        out = self._output(out, "out", x.shape, x.dtype)
        with self._lock:
            self.driver.act_forward(_dtype_code(x.dtype), code, p, x.size, x.ptr, out.ptr)
        return out

    def activation_backward(self, name, y, dy, out=None, *, x=None, param=None):
        code, p = self._act(name, param, ELEMENTWISE_ACTIVATIONS)
        if name in INPUT_DERIVATIVE_ACTIVATIONS:
            if x is None:
                raise ValueError(f"activation_backward: {name}'s derivative needs the input x")
            src = x = self._input(x, "x")
            y = None
        else:
            src = y = self._input(y, "y")
            x = None
        dy = self._input(dy, "dy", src.dtype)
        if dy.shape != src.shape:
            raise ValueError(f"dy: expected shape {src.shape}, got {dy.shape}")
        out = self._output(out, "out", src.shape, src.dtype)
        with self._lock:
            self.driver.act_backward(_dtype_code(src.dtype), code, p, src.size,
                                     x.ptr if x is not None else 0,
                                     y.ptr if y is not None else 0, dy.ptr, out.ptr)
        return out

    def axpby(self, alpha, x, beta, y, out=None):
        """out = alpha x + beta y elementwise (out may be x or y): a residual sum,
        a moving average."""
        x = self._input(x, "x")
        y = self._input(y, "y", x.dtype)
        if y.shape != x.shape:
            raise ValueError(f"y: expected shape {x.shape}, got {y.shape}")
        out = self._output(out, "out", x.shape, x.dtype)
        with self._lock:
            self.driver.axpby(_dtype_code(x.dtype), x.size, float(alpha), x.ptr, float(beta),
                              y.ptr, out.ptr)
        return out

    def add_penalty_gradient(self, w, grad, *, l1=0.0, l2=0.0):
        """grad += l1 sign(w) + 2 l2 w, in place (regularizers.L1L2's gradient)."""
        w = self._input(w, "w")
        grad = self._output(grad, "grad", w.shape, w.dtype)
        with self._lock:
            self.driver.penalty_grad(_dtype_code(w.dtype), w.size, float(l1), float(l2), w.ptr,
                                     grad.ptr)
        return grad

    def softmax(self, x, out=None):
        x = self._input(x, "x")
        if x.ndim != 2:
            raise ValueError(f"softmax: expected a 2-D array, got shape {x.shape}")
        out = self._output(out, "out", x.shape, x.dtype)
        with self._lock:
            self.driver.softmax(_dtype_code(x.dtype), x.shape[0], x.shape[1], x.ptr, out.ptr)
        return out

    def _targets(self, targets, pred, allow_ids):
        """(labels, rows): int64 class ids (validated on the host when they come
        from there) or float rows of pred's dtype and shape."""
        n, c = pred.shape
        if isinstance(targets, DeviceArray):
            if targets.dtype == np.int64 and targets.ndim == 1 and allow_ids:
                if targets.shape != (n,):
                    raise ValueError(f"targets: expected {n} class ids, got shape {targets.shape}")
                return targets, None
            targets = self._input(targets, "targets", pred.dtype)
            if targets.shape != pred.shape:
                raise ValueError(f"targets: expected shape {pred.shape}, got {targets.shape}")
            return None, targets
        t = np.asarray(targets)
        if t.ndim == 1 and allow_ids:
            if not np.issubdtype(t.dtype, np.integer):
                raise TypeError(f"targets: class ids must be integers, got dtype {t.dtype}")
            if t.shape != (n,):
                raise ValueError(f"targets: expected {n} class ids, got shape {t.shape}")
            bad = (t < 0) | (t >= c)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"targets contains label {t[i]} at index {i}, out of range "
                                 f"for {c} classes")
            return self.to_device(t, np.int64), None
        if t.dtype.kind not in "fiub":
            raise TypeError(f"targets: expected numbers, got dtype {t.dtype}")
        if t.shape != pred.shape:
            raise ValueError(f"targets: expected shape {pred.shape}, got {t.shape}")
        return None, self.to_device(t, pred.dtype)

    def loss(self, kind, y_pred, targets, grad=None, *, eps=1e-7, margin=1.0, want_grad=True):
        """(loss, grad) of a loss of losses.py on the device: kind is one of
        LOSS_KINDS. loss is a 0-d float64 DeviceArray (``float()`` reads it);
        grad = dL/dy_pred (None when want_grad is False), divided by the batch
        size (softmax_cross_entropy, crossentropy_probs, hinge) or by the
        element count (mse, mae, bce_*), as losses.py."""
        if kind not in LOSS_KINDS:
            raise ValueError(f"loss: expected one of {sorted(LOSS_KINDS)}, got {kind!r}")
        pred = self._input(y_pred, "y_pred")
        if pred.ndim == 1:
            pred = pred.reshape(-1, 1)
        if pred.ndim != 2:
            raise ValueError(f"loss: expected predictions (N, C), got shape {pred.shape}")
        n, c = pred.shape
        per_row = kind in ("softmax_cross_entropy", "crossentropy_probs", "hinge")
        if isinstance(targets, np.ndarray) and targets.ndim == 1 and not per_row:
            targets = targets.reshape(-1, 1)
        labels, rows = self._targets(targets, pred, allow_ids=per_row)
        scale = float(n if per_row else pred.size)
        if want_grad:
            grad = self._output(grad, "grad", pred.shape, pred.dtype)
        else:
            grad = None
        result = self.empty((), np.float64)
        with self._lock:
            self.driver.loss(_dtype_code(pred.dtype), LOSS_KINDS[kind], n, c, pred.ptr,
                             labels.ptr if labels is not None else 0,
                             rows.ptr if rows is not None else 0,
                             grad.ptr if grad is not None else 0, scale, scale, float(eps),
                             float(margin), result.ptr)
        return result, grad

    def softmax_cross_entropy(self, logits, targets, grad=None):
        logits = self._input(logits, "logits")
        if logits.ndim != 2:
            raise ValueError(f"softmax_cross_entropy: expected logits of shape (N, C), "
                             f"got {logits.shape}")
        return self.loss("softmax_cross_entropy", logits, targets, grad)

    def column_sums(self, x, out=None):
        x = self._input(x, "x")
        if x.ndim != 2:
            raise ValueError(f"column_sums: expected a 2-D array, got shape {x.shape}")
        out = self._output(out, "out", (x.shape[1],), x.dtype)
        with self._lock:
            self.driver.col_sums(_dtype_code(x.dtype), x.shape[0], x.shape[1], x.ptr, out.ptr)
        return out

    # ------------------------------------------------------------ batch normalisation

    def _channels(self, x):
        c = x.shape[-1] if x.ndim else 0
        return (x.size // c if c else 0), c

    def batchnorm_stats(self, x, mean=None, var=None):
        x = self._input(x, "x")
        rows, c = self._channels(x)
        mean = self._output(mean, "mean", (c,), x.dtype)
        var = self._output(var, "var", (c,), x.dtype)
        with self._lock:
            self.driver.bn_stats(_dtype_code(x.dtype), rows, c, x.ptr, mean.ptr, var.ptr)
        return mean, var

    def batchnorm_apply(self, x, mean, var, gamma, beta, *, epsilon, out=None):
        x = self._input(x, "x")
        rows, c = self._channels(x)
        mean = self._optional(mean, "mean", x.dtype, (c,))
        var = self._optional(var, "var", x.dtype, (c,))
        if mean is None or var is None:
            raise ValueError("batchnorm_apply: mean and var are required")
        gamma = self._optional(gamma, "gamma", x.dtype, (c,))
        beta = self._optional(beta, "beta", x.dtype, (c,))
        out = self._output(out, "out", x.shape, x.dtype)
        with self._lock:
            self.driver.bn_apply(_dtype_code(x.dtype), rows, c, x.ptr, mean.ptr, var.ptr,
                                 gamma.ptr if gamma is not None else 0,
                                 beta.ptr if beta is not None else 0, float(epsilon), out.ptr)
        return out

    def batchnorm_backward(self, x, dy, mean, var, gamma, *, epsilon, training, dgamma=None,
                           dbeta=None, dx=None):
        x = self._input(x, "x")
        dy = self._input(dy, "dy", x.dtype)
        if dy.shape != x.shape:
            raise ValueError(f"dy: expected shape {x.shape}, got {dy.shape}")
        rows, c = self._channels(x)
        mean = self._optional(mean, "mean", x.dtype, (c,))
        var = self._optional(var, "var", x.dtype, (c,))
        if mean is None or var is None:
            raise ValueError("batchnorm_backward: mean and var are required")
        gamma = self._optional(gamma, "gamma", x.dtype, (c,))
        if dgamma is not None:
            dgamma = self._output(dgamma, "dgamma", (c,), x.dtype)
        if dbeta is not None:
            dbeta = self._output(dbeta, "dbeta", (c,), x.dtype)
        if dx is not None:
            dx = self._output(dx, "dx", x.shape, x.dtype)
        with self._lock:
            self.driver.bn_backward(_dtype_code(x.dtype), rows, c, x.ptr, dy.ptr, mean.ptr,
                                    var.ptr, gamma.ptr if gamma is not None else 0,
                                    float(epsilon), bool(training),
                                    dgamma.ptr if dgamma is not None else 0,
                                    dbeta.ptr if dbeta is not None else 0,
                                    dx.ptr if dx is not None else 0)
        return dx

    # ------------------------------------------------------------ convolution and pooling

    conv2d_output_hw = staticmethod(conv2d_output_hw)
    pool2d_output_hw = staticmethod(pool2d_output_hw)
    conv2d_workspace_size = staticmethod(conv2d_workspace_size)

    def _conv_geometry(self, x, w, stride, dilation, padding):
        if x.ndim != 4 or w.ndim != 4:
            raise ValueError(f"conv2d: expected x (N, H, W, C) and w (KH, KW, C, F), "
                             f"got shapes {x.shape} and {w.shape}")
        if x.shape[3] != w.shape[2]:
            raise ValueError(f"conv2d: x has {x.shape[3]} channels, w expects {w.shape[2]}")
        stride = _int_tuple(stride, 2, "stride", 1)
        dilation = _int_tuple(dilation, 2, "dilation", 1)
        padding = _int_tuple(padding, 4, "padding", 0)
        oh, ow = conv2d_output_hw(x.shape[1], x.shape[2], w.shape[:2], stride, dilation, padding)
        if oh < 1 or ow < 1:
            raise ValueError(f"conv2d: kernel {w.shape[:2]} with dilation {dilation} is larger "
                             f"than the input {x.shape[1:3]} padded by {padding}")
        n, h, wd, c = x.shape
        geom = (n, h, wd, c, w.shape[0], w.shape[1], w.shape[3], stride[0], stride[1],
                dilation[0], dilation[1], padding[0], padding[2], oh, ow)
        pointwise = _pointwise(w.shape, stride, padding)
        chunk = _col_chunk(x.shape, w.shape, oh, ow)
        col = 0 if pointwise else chunk * oh * ow * w.shape[0] * w.shape[1] * c
        return geom, chunk, col, oh, ow

    def _scratch(self, workspace, count, dtype, tag):
        if workspace is None:
            return self._workspace(count, dtype, tag)
        if not isinstance(workspace, DeviceArray) or workspace.dtype != dtype:
            raise TypeError(f"workspace: expected a {dtype} DeviceArray")
        if workspace.size < count:
            raise ValueError(f"workspace: expected at least {count} elements, got {workspace.size}")
        return workspace

    def conv2d_forward(self, x, w, b, activation, stride=(1, 1), dilation=(1, 1),
                       padding=(0, 0, 0, 0), out=None, workspace=None):
        x = self._input(x, "x")
        w = self._input(w, "w", x.dtype)
        geom, chunk, col_size, oh, ow = self._conv_geometry(x, w, stride, dilation, padding)
        b = self._optional(b, "b", x.dtype, (w.shape[3],))
        code, p = self._act(activation, None, FUSED_ACTIVATIONS)
        out = self._output(out, "out", (x.shape[0], oh, ow, w.shape[3]), x.dtype)
        col = self._scratch(workspace, col_size, x.dtype, "col")
        with self._lock:
            self.driver.conv2d_forward(_dtype_code(x.dtype), geom, chunk, x.ptr, w.ptr,
                                       b.ptr if b is not None else 0, code, p, col.ptr, out.ptr)
        return out

    def conv2d_backward(self, x, w, y, dy, activation, dw, db=None, dx=None, *, stride=(1, 1),
                        dilation=(1, 1), padding=(0, 0, 0, 0), workspace=None):
        x = self._input(x, "x")
        w = self._input(w, "w", x.dtype)
        y = self._input(y, "y", x.dtype)
        dy = self._input(dy, "dy", x.dtype)
        geom, chunk, col_size, oh, ow = self._conv_geometry(x, w, stride, dilation, padding)
        out_shape = (x.shape[0], oh, ow, w.shape[3])
        for arr, name in ((y, "y"), (dy, "dy")):
            if arr.shape != out_shape:
                raise ValueError(f"{name}: expected shape {out_shape}, got {arr.shape}")
        code, p = self._act(activation, None, FUSED_ACTIVATIONS)
        dw = self._output(dw, "dw", w.shape, x.dtype)
        if db is not None:
            db = self._output(db, "db", (w.shape[3],), x.dtype)
        if dx is not None:
            dx = self._output(dx, "dx", x.shape, x.dtype)
        if workspace is None:
            col = self._workspace(col_size, x.dtype, "col")
            dz = self._workspace(dy.size, x.dtype, "dz")
        else:
            scratch = self._scratch(workspace, col_size + dy.size, x.dtype, None)
            col = scratch
            dz = DeviceArray(self, scratch.ptr + col_size * x.dtype.itemsize, (dy.size,),
                             x.dtype, base=scratch, owned=False)
        with self._lock:
            self.driver.conv2d_backward(_dtype_code(x.dtype), geom, chunk, x.ptr, w.ptr, y.ptr,
                                        dy.ptr, code, p, col.ptr, dz.ptr, dw.ptr,
                                        db.ptr if db is not None else 0,
                                        dx.ptr if dx is not None else 0)
        return dx

    def im2col(self, x, w_shape, stride=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0),
               first=0, count=None, out=None):
        """The column matrix of images [first, first + count) of x (a kernel of
        w_shape): the building block of conv2d, exposed for tests."""
        x = self._input(x, "x")
        fake_w = _Shape(w_shape)
        geom, _, _, oh, ow = self._conv_geometry(x, fake_w, stride, dilation, padding)
        count = x.shape[0] - first if count is None else count
        kcols = w_shape[0] * w_shape[1] * w_shape[2]
        out = self._output(out, "out", (count * oh * ow, kcols), x.dtype)
        with self._lock:
            self.driver.im2col(_dtype_code(x.dtype), geom, first, count, x.ptr, out.ptr)
        return out

    def col2im(self, dcol, x_shape, w_shape, stride=(1, 1), dilation=(1, 1),
               padding=(0, 0, 0, 0), first=0, count=None, dx=None):
        """dx images [first, first + count) = the gather of the column gradient
        dcol back to the input cells (the adjoint of im2col), for tests."""
        dcol = self._input(dcol, "dcol")
        geom, _, _, oh, ow = self._conv_geometry(_Shape(x_shape), _Shape(w_shape), stride,
                                                 dilation, padding)
        count = x_shape[0] - first if count is None else count
        if dx is None:
            dx = self.zeros(x_shape, dcol.dtype)
        with self._lock:
            self.driver.col2im(_dtype_code(dcol.dtype), geom, first, count, dcol.ptr, dx.ptr)
        return dx

    def _pool_geometry(self, x, pool_size, stride, padding, name):
        if x.ndim != 4:
            raise ValueError(f"pool2d: expected x of shape (N, H, W, C), got {x.shape}")
        pool_size = _int_tuple(pool_size, 2, "pool_size", 1)
        stride = _int_tuple(stride, 2, "stride", 1)
        padding = _int_tuple(padding, 4, "padding", 0)
        if padding[0] >= pool_size[0] or padding[1] >= pool_size[0] \
                or padding[2] >= pool_size[1] or padding[3] >= pool_size[1]:
            raise ValueError(f"{name}: padding {padding} must be smaller than the window "
                             f"{pool_size}, so that every window holds a real cell")
        oh, ow = pool2d_output_hw(x.shape[1], x.shape[2], pool_size, stride, padding)
        if oh < 1 or ow < 1:
            raise ValueError(f"pool2d: window {pool_size} is larger than the padded input "
                             f"of {x.shape[1:3]} with padding {padding}")
        n, h, w, c = x.shape
        return (n, h, w, c, pool_size[0], pool_size[1], stride[0], stride[1], padding[0],
                padding[2], oh, ow), (n, oh, ow, c)

    def maxpool2d_forward(self, x, pool_size, stride, padding=(0, 0, 0, 0), out=None,
                          argmax=None):
        x = self._input(x, "x")
        geom, out_shape = self._pool_geometry(x, pool_size, stride, padding, "maxpool2d")
        out = self._output(out, "out", out_shape, x.dtype)
        argmax = self._output(argmax, "argmax", out_shape, np.int32)
        with self._lock:
            self.driver.maxpool_forward(_dtype_code(x.dtype), geom, x.ptr, out.ptr, argmax.ptr)
        return out, argmax

    def maxpool2d_backward(self, argmax, dy, pool_size, stride, padding, dx):
        """dx = 0, then dx[argmax] += dy, computed as a gather: each input cell
        sums dy over the windows holding it whose argmax names it (argmax as
        maxpool2d_forward makes it: always inside its window)."""
        dy = self._input(dy, "dy")
        argmax = self._input(argmax, "argmax", np.int32, any_dtype=True)
        if not isinstance(dx, DeviceArray) or dx.ndim != 4:
            raise TypeError("dx: expected a DeviceArray of the forward input's shape (N, H, W, C)")
        geom, out_shape = self._pool_geometry(dx, pool_size, stride, padding, "maxpool2d")
        for arr, name in ((dy, "dy"), (argmax, "argmax")):
            if arr.shape != out_shape:
                raise ValueError(f"{name}: expected shape {out_shape}, got {arr.shape}")
        dx = self._output(dx, "dx", dx.shape, dy.dtype)
        with self._lock:
            self.driver.maxpool_backward(_dtype_code(dy.dtype), geom, argmax.ptr, dy.ptr, dx.ptr)
        return dx

    def avgpool2d_forward(self, x, pool_size, stride, padding=(0, 0, 0, 0), out=None):
        x = self._input(x, "x")
        geom, out_shape = self._pool_geometry(x, pool_size, stride, padding, "avgpool2d")
        out = self._output(out, "out", out_shape, x.dtype)
        with self._lock:
            self.driver.avgpool_forward(_dtype_code(x.dtype), geom, x.ptr, out.ptr)
        return out

    def avgpool2d_backward(self, dy, pool_size, stride, padding, dx):
        dy = self._input(dy, "dy")
        if not isinstance(dx, DeviceArray) or dx.ndim != 4:
            raise TypeError("dx: expected a DeviceArray of the forward input's shape (N, H, W, C)")
        geom, out_shape = self._pool_geometry(dx, pool_size, stride, padding, "avgpool2d")
        if dy.shape != out_shape:
            raise ValueError(f"dy: expected shape {out_shape}, got {dy.shape}")
        dx = self._output(dx, "dx", dx.shape, dy.dtype)
        with self._lock:
            self.driver.avgpool_backward(_dtype_code(dy.dtype), geom, dy.ptr, dx.ptr)
        return dx

    # ------------------------------------------------------------ optimizer

    def _segments(self, params, grads, state0, state1):
        """The device table of rp_dev_segment for these arrays (cached by pointers)."""
        key = tuple((p.ptr, g.ptr, s0.ptr if s0 is not None else 0,
                     s1.ptr if s1 is not None else 0, p.size)
                    for p, g, s0, s1 in zip(params, grads, state0, state1))
        entry = self._segment_tables.get(key)
        if entry is None:
            table = np.zeros((len(key), 6), dtype=np.uint64)
            offset = 0
            for i, (pp, gp, s0p, s1p, size) in enumerate(key):
                table[i] = (pp, gp, s0p, s1p, offset, size)
                offset += size
            if len(self._segment_tables) > 16:
                self._segment_tables.clear()
            # the arrays are kept with the table: their pointers stay valid
            entry = self._segment_tables[key] = (self.to_device(table), offset,
                                                 (params, grads, state0, state1))
        return entry[0], entry[1]

    def optimizer_step(self, rule, params, grads, state0, state1, *, lr, mode="check_apply",
                       momentum=0.0, nesterov=False, weight_decay=0.0, beta_1=0.9, beta_2=0.999,
                       epsilon=1e-7, step=1, decoupled=False, rho=0.9, bounds=None, wait=True):
        """optimizer_step of docs/BACKEND.md over every parameter in one launch
        (plus the check's launches in the check modes). Returns the index of
        the first parameter whose update is not finite, or -1; with
        wait=False, a 0-d int64 DeviceArray holding it (no synchronisation).
        ``bounds`` is accepted for interface parity and ignored (the device
        always checks)."""
        if mode not in _STEP_MODES:
            raise ValueError(f"mode must be one of {_STEP_MODES}, got {mode!r}")
        if rule not in ("sgd", "adam", "rmsprop", "adagrad"):
            raise ValueError(f"rule must be sgd, adam, rmsprop or adagrad, got {rule!r}")
        params, grads = list(params), list(grads)
        state0, state1 = list(state0), list(state1)
        if not (len(params) == len(grads) == len(state0) == len(state1)):
            raise ValueError("optimizer_step: params, grads, state0 and state1 differ in length")
        dtype = params[0].dtype if params else np.dtype(np.float32)
        needs = {"sgd": (momentum != 0, False), "adam": (True, True),
                 "rmsprop": (True, momentum != 0), "adagrad": (True, False)}[rule]
        for i, (p, g, s0, s1) in enumerate(zip(params, grads, state0, state1)):
            for arr, name, required in ((p, "param", True), (g, "grad", True),
                                        (s0, "state0", needs[0]), (s1, "state1", needs[1])):
                if arr is None:
                    if required:
                        raise ValueError(f"optimizer_step: {name}[{i}] is required by {rule}")
                    continue
                if not isinstance(arr, DeviceArray) or arr.backend is not self:
                    raise TypeError(f"optimizer_step: {name}[{i}] must be a DeviceArray of "
                                    f"this backend (parameters and state live on the device)")
                if arr.dtype != dtype or arr.shape != p.shape:
                    raise ValueError(f"optimizer_step: {name}[{i}] is {arr.dtype} {arr.shape}, "
                                     f"expected {dtype} {p.shape}")
            if not needs[0]:
                state0[i] = None
            if not needs[1]:
                state1[i] = None
        c1 = c2 = 1.0
        if rule == "adam":
            step = int(step)
            if step < 1:
                raise ValueError(f"step must be an integer >= 1, got {step}")
            c1, c2 = 1.0 / (1.0 - float(beta_1) ** step), 1.0 / (1.0 - float(beta_2) ** step)
        result = self.empty((), np.int64)
        with self._lock:
            if not params:
                self.driver.memset(result.ptr, 0xFF, 8)
            else:
                table, total = self._segments(params, grads, state0, state1)
                self.driver.optimizer_step(
                    _dtype_code(dtype), rule, _MODE_CODES[mode], table.ptr, len(params), total,
                    result.ptr, float(lr), float(weight_decay), float(momentum), bool(nesterov),
                    float(beta_1), float(beta_2), c1, c2, bool(decoupled), float(rho),
                    float(epsilon))
        if bounds is not None:
            bounds[0] = 0.0
        return int(result) if wait else result

    def sgd_step(self, param, grad, velocity, *, lr, momentum=0.0, nesterov=False,
                 weight_decay=0.0, check_only=False):
        """In place; with check_only, returns 1 when the update is not finite
        (the device reports which tensors fail, not how many values), else 0."""
        bad = self.optimizer_step("sgd", [param], [grad], [velocity], [None], lr=lr,
                                  mode="check" if check_only else "apply", momentum=momentum,
                                  nesterov=nesterov, weight_decay=weight_decay)
        return int(bad >= 0) if check_only else None

    def adam_step(self, param, grad, m, v, *, lr, beta_1, beta_2, epsilon, step,
                  weight_decay=0.0, decoupled=False, check_only=False):
        bad = self.optimizer_step("adam", [param], [grad], [m], [v], lr=lr,
                                  mode="check" if check_only else "apply", beta_1=beta_1,
                                  beta_2=beta_2, epsilon=epsilon, step=step,
                                  weight_decay=weight_decay, decoupled=decoupled)
        return int(bad >= 0) if check_only else None

    def rmsprop_step(self, param, grad, ms, mom, *, lr, rho, momentum=0.0, epsilon,
                     check_only=False):
        bad = self.optimizer_step("rmsprop", [param], [grad], [ms], [mom], lr=lr,
                                  mode="check" if check_only else "apply", rho=rho,
                                  momentum=momentum, epsilon=epsilon)
        return int(bad >= 0) if check_only else None

    def adagrad_step(self, param, grad, acc, *, lr, epsilon, check_only=False):
        bad = self.optimizer_step("adagrad", [param], [grad], [acc], [None], lr=lr,
                                  mode="check" if check_only else "apply", epsilon=epsilon)
        return int(bad >= 0) if check_only else None

    # ------------------------------------------------------------ checks, batches, dropout

    def find_nonfinite(self, x, wait=True):
        """Flat index of the first NaN or Inf of x, or -1 (wait=False: a 0-d
        int64 DeviceArray holding it)."""
        x = self._input(x, "x")
        result = self.empty((), np.int64)
        with self._lock:
            self.driver.find_nonfinite(_dtype_code(x.dtype), x.size, x.ptr, result.ptr)
        return int(result) if wait else result

    def gather_rows(self, x, index, out=None):
        """out[r] = x[index[r]]. x on the device (any dtype): the rows are
        gathered there; x on the host (a NumPy array): gathered on the host by
        the CPU backend, then copied. index: int64 positions in [0, len(x))
        (IndexError otherwise, before anything is written)."""
        idx = np.ascontiguousarray(index, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"index: expected a 1-D array, got shape {idx.shape}")
        if not isinstance(x, DeviceArray):
            from . import get_backend
            rows = get_backend("cpu").gather_rows(np.ascontiguousarray(x), idx)
            return self.to_device(rows, out=out)
        if x.ndim < 1:
            raise ValueError("gather_rows: x must have at least one dimension")
        bad = (idx < 0) | (idx >= x.shape[0])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IndexError(f"index[{i}] = {idx[i]} is out of range for {x.shape[0]} rows")
        out = self._output(out, "out", (idx.shape[0],) + x.shape[1:], x.dtype)
        if out.ptr < x.ptr + x.nbytes and x.ptr < out.ptr + out.nbytes:
            raise ValueError("gather_rows: out overlaps x")
        row_bytes = x.nbytes // x.shape[0] if x.shape[0] else 0
        dev_index = self.to_device(idx)
        with self._lock:
            self.driver.gather_rows(row_bytes, idx.shape[0], dev_index.ptr, x.ptr, out.ptr)
        return out

    def dropout_forward(self, x, rate, seed, counter, out=None, mask=None):
        """Inverted dropout: mask = 0 (probability rate) or 1 / (1 - rate),
        drawn from (seed, counter, element index) by a counter-based generator
        (bodies/untyped.inc); out = x * mask. Returns (out, mask)."""
        x = self._input(x, "x")
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout: rate must be in [0, 1), got {rate!r}")
        out = self._output(out, "out", x.shape, x.dtype)
        mask = self._output(mask, "mask", x.shape, x.dtype)
        with self._lock:
            self.driver.dropout(_dtype_code(x.dtype), x.size, int(seed) & (2**64 - 1),
                                int(counter) & (2**64 - 1), rate, x.ptr, mask.ptr, out.ptr)
        return out, mask

    def dropout_backward(self, dy, mask, out=None):
        dy = self._input(dy, "dy")
        mask = self._input(mask, "mask", dy.dtype)
        if mask.shape != dy.shape:
            raise ValueError(f"mask: expected shape {dy.shape}, got {mask.shape}")
        out = self._output(out, "out", dy.shape, dy.dtype)
        with self._lock:
            self.driver.mul(_dtype_code(dy.dtype), dy.size, dy.ptr, mask.ptr, out.ptr)
        return out


class _Shape:
    """Stands in for an array where only the shape is needed (im2col/col2im)."""

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)
