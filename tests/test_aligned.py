"""64-byte aligned arrays (retroprop/aligned.py), and the library's own
long-lived arrays being allocated that way."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import aligned


def _is_aligned(arr):
    return arr.ctypes.data % aligned.ALIGNMENT == 0


@pytest.mark.parametrize("shape", [0, 1, 7, (3, 5), (0, 4), (2, 3, 13), (784, 256)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
def test_aligned_arrays_are_ordinary_arrays(shape, dtype):
    expected_shape = (shape,) if np.ndim(shape) == 0 else shape
    for make in (lambda: aligned.empty(shape, dtype), lambda: aligned.zeros(shape, dtype),
                 lambda: aligned.full(shape, 3, dtype)):
        arr = make()
        assert arr.shape == expected_shape and arr.dtype == dtype
        assert arr.flags.c_contiguous and arr.flags.writeable
        assert arr.size == 0 or _is_aligned(arr)
    np.testing.assert_array_equal(aligned.zeros(shape, dtype), np.zeros(shape, dtype))
    np.testing.assert_array_equal(aligned.full(shape, 3, dtype), np.full(shape, 3, dtype))


def test_copy_is_aligned_contiguous_and_independent():
    src = np.arange(60, dtype=np.float64).reshape(6, 10)[:, ::2]   # not contiguous
    out = aligned.copy(src, np.float32)
    assert _is_aligned(out) and out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_array_equal(out, src.astype(np.float32))
    out[0, 0] = -1
    assert src[0, 0] == 0


def test_the_library_allocates_its_arrays_aligned():
    """Parameters, gradients, optimizer state, the step programs' buffers and
    the Trainer's batch buffers: what the kernels read and write every step."""
    L = rp.layers
    # Big enough for malloc to map them itself, 16 bytes past a page boundary.
    model = rp.Sequential([L.Dense(32, activation="relu"), L.Dense(5, activation="softmax")],
                          input_shape=(2100,), seed=0)
    trainer = rp.Trainer(model, "categorical_crossentropy",
                         rp.optim.SGD(lr=0.1, momentum=0.9), metrics=[])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((150, 2100)).astype(np.float32), rng.integers(0, 5, 150)
    seen = []

    class Spy(rp.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            program = next(iter(trainer._programs.values()))
            seen.append(program.values[0])      # the batch the step trained on
    trainer.callbacks.append(Spy())
    trainer.fit(x, y, epochs=1, batch_size=64, verbose=0)
    arrays = [a for layer in model.layers for a in (*layer.params.values(), *layer.grads.values())]
    arrays += list(trainer.optimizer.state_arrays().values())
    for program in trainer._programs.values():
        arrays += [a for a in program.table if isinstance(a, np.ndarray) and a.base is None]
    arrays += seen
    assert len(arrays) > 10
    assert all(_is_aligned(a) for a in arrays)
    for opt in (rp.optim.Adam(lr=0.01), rp.optim.RMSprop(lr=0.01), rp.optim.Adagrad(lr=0.1)):
        rp.Trainer(model, "categorical_crossentropy", opt, metrics=[]).fit(
            x, y, epochs=1, batch_size=64, verbose=0)
        assert all(_is_aligned(a) for a in opt.state_arrays().values())
