"""The optimizer's bounds between steps (retroprop/optim.h,
rp_optimizer_step_tracked_*): an SGD step may skip its full check when a
scan of the gradients and the largest |parameter| and |velocity| the previous
step wrote prove the update finite. It must write exactly what the checked
step writes, refuse exactly what that step refuses (writing nothing), and the
Trainer must stop trusting the bounds whenever something else may have
written the weights."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import layers as L
from retroprop.backend import cpu
from retroprop.callbacks import Callback, TerminateOnNaN
from retroprop.trainer import NonFiniteError

# The largest tensor is split over both threads; the others are odd sizes.
SIZES = [1, 17, 5000, 70001]


def _arrays(rng, dtype, scale=0.1):
    return [(rng.standard_normal(n) * scale).astype(dtype) for n in SIZES]


def _step(params, grads, velocities, bounds=None, **kw):
    nothing = [None] * len(params)
    return cpu.optimizer_step("sgd", params, grads, velocities if kw.get("momentum") else nothing,
                              nothing, bounds=bounds, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_tracked_steps_write_what_checked_steps_write(threads, dtype, momentum, nesterov):
    rng = np.random.default_rng(1)
    checked_p, checked_v = _arrays(rng, dtype), _arrays(rng, dtype)
    tracked_p, tracked_v = [a.copy() for a in checked_p], [a.copy() for a in checked_v]
    bounds = np.zeros(3)
    kw = dict(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=1e-3)
    for _ in range(4):
        grads = _arrays(rng, dtype)
        assert _step(checked_p, grads, checked_v, **kw) == -1
        assert _step(tracked_p, grads, tracked_v, bounds, **kw) == -1
        for a, b in zip(checked_p + checked_v, tracked_p + tracked_v):
            np.testing.assert_array_equal(a, b)
        # the bounds are the exact largest magnitudes written
        assert bounds[0] == 1
        assert bounds[1] == max(np.abs(p).max() for p in tracked_p)
        assert bounds[2] == (max(np.abs(v).max() for v in tracked_v) if momentum else 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("poison", ["nan_gradient", "inf_gradient", "overflowing_update"])
def test_tracked_step_refuses_what_the_check_refuses(threads, dtype, poison):
    """With valid bounds: a NaN/Inf gradient, or a finite one whose update
    overflows, is refused, nothing is written and the bounds stay valid."""
    rng = np.random.default_rng(2)
    params, velocities = _arrays(rng, dtype), _arrays(rng, dtype)
    bounds = np.zeros(3)
    assert _step(params, _arrays(rng, dtype), velocities, bounds, lr=0.01, momentum=0.9) == -1
    assert bounds[0] == 1
    grads, lr = _arrays(rng, dtype), 0.01
    if poison == "nan_gradient":
        grads[2][1234] = np.nan
    elif poison == "inf_gradient":
        grads[3][-1] = -np.inf
    else:
        # finite, but p - lr * (0.9 v + g) overflows
        grads[3][7] = np.finfo(dtype).max / 2
        lr = 10.0
    before = [a.copy() for a in params + velocities]
    bounds_before = bounds.copy()
    expected = 2 if poison == "nan_gradient" else 3
    assert _step(params, grads, velocities, bounds, lr=lr, momentum=0.9) == expected
    for a, b in zip(params + velocities, before):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(bounds, bounds_before)


def test_large_but_finite_update_is_applied_like_the_checked_one():
    """Values near the top of float32 whose update stays finite: the bounds
    cannot prove it, so the step falls back to the full check and applies."""
    rng = np.random.default_rng(3)
    params, velocities = _arrays(rng, np.float32), _arrays(rng, np.float32)
    params[1][3] = np.float32(3e38)
    bounds = np.zeros(3)
    grads = _arrays(rng, np.float32)
    assert _step(params, grads, velocities, bounds, lr=1e-3, momentum=0.5) == -1
    assert bounds[0] == 1 and bounds[1] >= 2.9e38
    checked_p, checked_v = [a.copy() for a in params], [a.copy() for a in velocities]
    grads = _arrays(rng, np.float32)
    assert _step(checked_p, grads, checked_v, lr=1e-3, momentum=0.5) == -1
    assert _step(params, grads, velocities, bounds, lr=1e-3, momentum=0.5) == -1
    for a, b in zip(checked_p + checked_v, params + velocities):
        np.testing.assert_array_equal(a, b)


def test_other_modes_and_rules_clear_the_bounds():
    rng = np.random.default_rng(4)
    params, velocities = _arrays(rng, np.float32), _arrays(rng, np.float32)
    bounds = np.zeros(3)
    _step(params, _arrays(rng, np.float32), velocities, bounds, lr=0.01, momentum=0.9)
    assert bounds[0] == 1
    _step(params, _arrays(rng, np.float32), velocities, bounds, lr=0.01, momentum=0.9,
          mode="apply")
    assert bounds[0] == 0   # an unchecked write: its values are not known
    _step(params, _arrays(rng, np.float32), velocities, bounds, lr=0.01, momentum=0.9)
    assert bounds[0] == 1
    m, v = _arrays(rng, np.float32), [np.abs(a) for a in _arrays(rng, np.float32)]
    cpu.optimizer_step("adam", params, _arrays(rng, np.float32), m, v, lr=0.01, bounds=bounds)
    assert bounds[0] == 0   # only SGD steps are tracked


def test_bad_bounds_array_is_refused():
    p, g = np.zeros(4, np.float32), np.ones(4, np.float32)
    for bad in (np.zeros(3, np.float32), np.zeros(4), np.zeros(6)[::2], [0.0, 0.0, 0.0]):
        with pytest.raises(TypeError, match="bounds must be"):
            cpu.optimizer_step("sgd", [p], [g], [None], [None], lr=0.1, bounds=bad)


# ---------------------------------------------------------------- the Trainer

def _mlp_and_data(seed=0):
    """A Dense softmax MLP (its steps run as one-call step programs) and data whose
    first feature is always 0, so the first row of W1 changes no output."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((96, 8)).astype(np.float32)
    x[:, 0] = 0.0
    y = rng.integers(0, 3, 96)
    model = rp.Sequential([L.Dense(16, activation="relu"), L.Dense(3, activation="softmax")],
                          input_shape=(8,), seed=seed)
    return model, x, y


def test_trainer_keeps_the_bounds_with_read_only_callbacks():
    model, x, y = _mlp_and_data()
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.01, momentum=0.9),
                         callbacks=[TerminateOnNaN()])
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=1)
    assert trainer._step_bounds[0] == 1
    params = [p for _, p, _ in model.named_parameters()]
    assert trainer._step_bounds[1] == max(np.abs(p).max() for p in params)


def _poison_first_row(model):
    """A huge value in W1's first row (an input that is always 0, so the loss
    does not see it): with weight decay 4 the next update of it overflows."""
    model.layers[0].params["W"][0, 0] = 1e38


class PoisonAfterThirdBatch(Callback):
    def on_batch_end(self, batch, logs=None):
        if batch == 2:
            _poison_first_row(self.trainer.model)


class PoisonAfterFirstEpoch(Callback):
    """(no on_batch_end: only the epoch start forgets the bounds)"""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            _poison_first_row(self.trainer.model)


def _poisoned_fit(callback, **fit_kwargs):
    """Fits with a callback that poisons W1 once; the step after it must be
    refused with nothing written. Returns the NonFiniteError."""
    model, x, y = _mlp_and_data()
    trainer = rp.Trainer(model, "categorical_crossentropy",
                         rp.optim.SGD(lr=0.01, momentum=0.9, weight_decay=4.0),
                         callbacks=[callback])
    with pytest.raises(NonFiniteError, match="would become NaN or Inf") as err:
        trainer.fit(x, y, batch_size=16, verbose=0, **fit_kwargs)
    # refused, not written: no Inf in the weights or the velocities
    assert model.layers[0].params["W"][0, 0] == np.float32(1e38)
    for _, p, _ in model.named_parameters():
        assert np.isfinite(p).all()
    for v in trainer.optimizer.state_arrays().values():
        assert np.isfinite(v).all()
    return err.value


def test_a_callback_that_writes_the_weights_is_not_trusted():
    assert _poisoned_fit(PoisonAfterThirdBatch(), epochs=1, shuffle=False).batch == 4


def test_weights_written_between_epochs_are_checked():
    err = _poisoned_fit(PoisonAfterFirstEpoch(), epochs=2)
    assert (err.epoch, err.batch) == (2, 1)


def test_weights_written_between_fits_are_checked():
    model, x, y = _mlp_and_data()
    trainer = rp.Trainer(model, "categorical_crossentropy",
                         rp.optim.SGD(lr=0.01, momentum=0.9, weight_decay=4.0))
    trainer.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert trainer._step_bounds[0] == 1
    _poison_first_row(model)
    with pytest.raises(NonFiniteError, match="would become NaN or Inf"):
        trainer.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert model.layers[0].params["W"][0, 0] == np.float32(1e38)


def test_fit_with_bounds_matches_fit_checking_every_step(monkeypatch):
    """The Trainer's tracked steps train to the same bits as steps that all
    run the full check."""
    results = []
    for forget_every_step in (False, True):
        model, x, y = _mlp_and_data(seed=5)
        trainer = rp.Trainer(model, "categorical_crossentropy",
                             rp.optim.SGD(lr=0.05, momentum=0.9, nesterov=True))
        if forget_every_step:
            program_step = rp.step.StepProgram.step

            def checked_step(self, xs, targets, mode, next_batch=None, bounds=None):
                bounds[0] = 0.0
                return program_step(self, xs, targets, mode, next_batch, bounds)
            monkeypatch.setattr(rp.step.StepProgram, "step", checked_step)
        trainer.fit(x, y, epochs=3, batch_size=16, verbose=0)
        results.append([p.copy() for _, p, _ in model.named_parameters()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)

