"""PolynomialDecay and PiecewiseConstantDecay: values, the course's numbers,
use by optimizers and LearningRateScheduler, configs, bad arguments."""
import numpy as np
import pytest

import retroprop as rp
from retroprop import schedules


def test_polynomial_linear_and_quadratic():
    lin = schedules.PolynomialDecay(0.1, decay_steps=10)
    assert [lin(t) for t in (0, 5, 10, 20)] == pytest.approx([0.1, 0.05, 0.0, 0.0])
    quad = schedules.PolynomialDecay(1.0, decay_steps=4, end_lr=0.2, power=2)
    # (1 - 0.2) (1 - t/4)^2 + 0.2
    assert [quad(t) for t in range(6)] == pytest.approx(
        [1.0, 0.8 * 0.5625 + 0.2, 0.8 * 0.25 + 0.2, 0.8 * 0.0625 + 0.2, 0.2, 0.2])


def test_polynomial_against_torch():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.3)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=7, power=1.5)
    ours = schedules.PolynomialDecay(0.3, decay_steps=7, power=1.5)
    for t in range(10):
        assert ours(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()


def test_piecewise_changes_at_the_boundary():
    s = schedules.PiecewiseConstantDecay([60, 90], [0.1, 0.01, 0.001])
    assert [s(t) for t in (0, 59, 60, 89, 90, 1000)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_piecewise_against_torch_multistep():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 7], gamma=0.1)
    ours = schedules.PiecewiseConstantDecay([3, 7], [0.1, 0.01, 0.001])
    for t in range(10):
        assert ours(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


def test_piecewise_per_epoch_with_the_callback():
    x = np.random.default_rng(0).standard_normal((16, 3))
    y = np.arange(16) % 2
    model = rp.Sequential([rp.layers.Dense(2, activation="softmax")], input_shape=(3,), seed=0)
    cb = rp.callbacks.LearningRateScheduler(
        schedules.PiecewiseConstantDecay([2, 4], [0.1, 0.01, 0.001]))
    rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=1.0),
               callbacks=[cb]).fit(x, y, epochs=6, batch_size=8, verbose=0)
    assert cb.lrs == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_as_optimizer_lr_counts_steps():
    opt = rp.optim.SGD(lr=schedules.PolynomialDecay(0.5, decay_steps=4, end_lr=0.1))
    param = np.array([1.0])
    seen = []
    for _ in range(6):
        seen.append(opt.current_lr())
        opt.step([("w", param, np.array([1.0]))])
    assert seen == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1, 0.1])
    assert param[0] == pytest.approx(1.0 - sum(seen))


def test_serialize_round_trip_through_an_optimizer():
    for sched in (schedules.PolynomialDecay(0.2, 10, end_lr=0.01, power=2.0),
                  schedules.PiecewiseConstantDecay([5, 8], [0.3, 0.2, 0.1])):
        again = schedules.deserialize(sched.serialize())
        assert type(again) is type(sched) and again.get_config() == sched.get_config()
        assert [again(t) for t in range(12)] == [sched(t) for t in range(12)]
        opt = rp.optim.deserialize(rp.optim.Adam(lr=sched).serialize())
        assert opt.lr.get_config() == sched.get_config()


@pytest.mark.parametrize("make,match", [
    (lambda: schedules.PolynomialDecay(0.1, 0), "decay_steps must be an integer >= 1"),
    (lambda: schedules.PolynomialDecay(0.1, 2.5), "decay_steps must be an integer >= 1"),
    (lambda: schedules.PolynomialDecay(0.1, 5, power=0), "power must be a finite number > 0"),
    (lambda: schedules.PolynomialDecay(0.1, 5, end_lr=-1), "end_lr must be a finite number"),
    (lambda: schedules.PolynomialDecay(float("nan"), 5), "lr0 must be a finite number"),
    (lambda: schedules.PiecewiseConstantDecay([10], [0.1]), "one more entry than boundaries"),
    (lambda: schedules.PiecewiseConstantDecay([10, 5], [1, 2, 3]), "strictly increasing"),
    (lambda: schedules.PiecewiseConstantDecay([10, 10], [1, 2, 3]), "strictly increasing"),
    (lambda: schedules.PiecewiseConstantDecay([-1], [1, 2]), "each boundary must be"),
    (lambda: schedules.PiecewiseConstantDecay([1], [1, float("inf")]), "each value must be"),
    (lambda: schedules.PiecewiseConstantDecay([1], ["a", 2]), "sequences of numbers"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_negative_step_is_refused():
    with pytest.raises(ValueError, match="t must be >= 0"):
        schedules.PiecewiseConstantDecay([1], [1, 2])(-1)
