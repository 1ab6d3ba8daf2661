"""Learning-rate schedules: formulas, use in optimizers, serialisation."""
import math

import numpy as np
import pytest

import retroprop as rp
from retroprop import schedules


@pytest.mark.parametrize("t", [0, 1, 7, 100, 12345])
def test_formulas(t):
    assert schedules.InverseTimeDecay(0.5, 0.1)(t) == pytest.approx(0.5 / (1 + 0.1 * t))
    assert schedules.ExponentialDecay(0.5, 0.01)(t) == pytest.approx(0.5 * math.exp(-0.01 * t))
    assert schedules.StepDecay(0.5, 0.5, 10)(t) == pytest.approx(0.5 * 0.5 ** (t // 10))
    s = min(t, 100) / 100
    expected = 0.5 * (0.9 * 0.5 * (1 + math.cos(math.pi * s)) + 0.1)
    assert schedules.CosineDecay(0.5, 100, alpha=0.1)(t) == pytest.approx(expected)


def test_step_decay_boundaries():
    sched = schedules.StepDecay(1.0, 0.1, 3)
    assert [sched(t) for t in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])


def test_cosine_endpoints():
    sched = schedules.CosineDecay(0.2, 10)
    assert sched(0) == pytest.approx(0.2)
    assert sched(5) == pytest.approx(0.1)
    assert sched(10) == 0.0 and sched(1000) == 0.0


def test_schedule_drives_the_optimizer_step_count():
    # t counts optimizer steps (batches): 8 samples / batch 2 = 4 steps per epoch.
    sched = schedules.InverseTimeDecay(0.1, 1.0)
    opt = rp.optim.SGD(lr=sched)
    model = rp.Sequential([rp.layers.Dense(2, activation="softmax")], input_shape=(3,), seed=0)
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    y = np.arange(8) % 2
    rp.Trainer(model, "categorical_crossentropy", opt).fit(x, y, epochs=2, batch_size=2,
                                                           verbose=0)
    assert opt.iterations == 8
    assert opt.current_lr() == pytest.approx(0.1 / 9)


def test_cosine_to_zero_is_accepted_by_optimizers():
    opt = rp.optim.Adam(lr=schedules.CosineDecay(0.1, 1))
    w = np.ones(2)
    opt.step([("w", w, np.ones(2))])
    assert opt.current_lr() == 0.0
    before = w.copy()
    opt.step([("w", w, np.ones(2))])      # a zero learning rate leaves the weights alone
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("sched", [schedules.InverseTimeDecay(0.1, 0.5),
                                   schedules.ExponentialDecay(0.1, 0.5),
                                   schedules.StepDecay(0.1, 0.5, 4),
                                   schedules.CosineDecay(0.1, 50, 0.2)], ids=repr)
def test_config_roundtrip_and_optimizer_serialisation(sched):
    clone = schedules.deserialize(sched.serialize())
    assert clone.get_config() == sched.get_config()
    assert [clone(t) for t in range(20)] == [sched(t) for t in range(20)]
    opt = rp.optim.deserialize(rp.optim.Adam(lr=sched).serialize())
    assert isinstance(opt.lr, type(sched)) and opt.lr(7) == sched(7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="lr0"):
        schedules.ExponentialDecay(0, 0.1)
    with pytest.raises(ValueError, match="step"):
        schedules.StepDecay(0.1, 0.5, 0)
    with pytest.raises(ValueError, match="alpha"):
        schedules.CosineDecay(0.1, 10, alpha=2)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.deserialize({"class_name": "Nope"})
