"""Backends: the only place compute kernels are called.

``get_backend()`` returns a module implementing the functions listed in
docs/BACKEND.md. The default is the C backend (``cpu``); ``numpy`` is the
plain NumPy reference used by the tests, selectable with the environment
variable ``RETROPROP_BACKEND`` for debugging; ``cuda`` is the optional GPU
backend (docs/CUDA.md): asking for it where it cannot run raises
``CudaUnavailableError`` (a RuntimeError) saying why.
"""
import importlib
import os

_BACKEND_MODULES = {"cpu": ".cpu", "numpy": ".numpy_ref", "cuda": ".cuda"}
_loaded = {}


def get_backend(name=None):
    """Return the backend module called ``name`` (default: $RETROPROP_BACKEND or "cpu")."""
    if name is None:
        name = os.environ.get("RETROPROP_BACKEND", "cpu")
    if not isinstance(name, str) or name not in _BACKEND_MODULES:
        raise ValueError(
            f"unknown backend {name!r}; expected one of {sorted(_BACKEND_MODULES)}")
    if name not in _loaded:
        _loaded[name] = importlib.import_module(_BACKEND_MODULES[name], __name__)
    return _loaded[name]


def backend_name(module):
    """The name ``get_backend`` knows ``module`` by ("cpu", "numpy")."""
    for name, relative in _BACKEND_MODULES.items():
        if getattr(module, "__name__", None) == __name__ + relative:
            return name
    raise ValueError(f"{module!r} is not a retroprop backend")


def state_without_modules(state, caches=()):
    """An object's ``__dict__`` made copyable and picklable: its ``backend``
    module replaced by the backend's name, and each attribute named in
    ``caches`` emptied (caches of compiled objects that point into the
    original's arrays and must never be shared with a copy)."""
    state = dict(state)
    if state.get("backend") is not None:
        state["backend"] = backend_name(state["backend"])
    for attr in caches:
        if attr in state:
            state[attr] = type(state[attr])()
    return state


def state_with_modules(state):
    """The inverse of :func:`state_without_modules`: the backend name back to its module."""
    state = dict(state)
    if isinstance(state.get("backend"), str):
        state["backend"] = get_backend(state["backend"])
    return state


def set_num_threads(n):
    """Set the number of OpenMP threads the C kernels use, 1 <= n <= 512
    (an OMP_NUM_THREADS above 512 is clamped to it)."""
    get_backend("cpu").set_num_threads(n)


def get_num_threads():
    """Number of threads the C kernels use."""
    return get_backend("cpu").get_num_threads()


def backend_info():
    """Dict describing the compiled kernels: SIMD level, threads, compiler, OpenMP, CUDA
    (when the CUDA backend can run: the GPU, its compute capability, cuBLAS)."""
    info = get_backend("cpu").backend_info()
    try:
        cuda = get_backend("cuda")
    except RuntimeError as exc:
        info["cuda_note"] = str(exc)
    else:
        info["cuda"] = True
        info["cuda_note"] = ""
        info["cuda_device"] = cuda.backend_info()
    return info
