"""LR schedules: warmup, the shape of each decay, the end points and the registry."""

import itertools
import math

import pytest

from tinylm.core.registry import UnknownNameError
from tinylm.dist import SCHEDULES, TrainConfig, lr_at
from tinylm.dist.schedules import wsd_decay_start


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=100, lr=1.0, min_lr=0.1, warmup_steps=10, progress=False)
    return TrainConfig(**{**base, **kw})


def curve(c: TrainConfig) -> list[float]:
    return [lr_at(s, c) for s in range(c.max_steps + 1)]


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_warms_up_linearly_to_the_peak(name):
    c = cfg(schedule=name)
    warm = [lr_at(s, c) for s in range(c.warmup_steps)]
    assert warm == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert all(b > a for a, b in itertools.pairwise(warm))
    assert lr_at(c.warmup_steps, c) == pytest.approx(c.lr)


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd"])
def test_decaying_schedules_fall_monotonically_to_min_lr(name):
    c = cfg(schedule=name)
    after = curve(c)[c.warmup_steps :]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(after))
    assert after[-1] == pytest.approx(c.min_lr)
    assert lr_at(10_000, c) == pytest.approx(c.min_lr)  # past the end it stays at min_lr
    assert min(after) >= c.min_lr - 1e-12


def test_cosine_values():
    c = cfg(schedule="cosine")
    assert lr_at(55, c) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: the mean of lr and min_lr
    p = (30 - 10) / 90
    assert lr_at(30, c) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * p)))


def test_linear_values():
    c = cfg(schedule="linear")
    assert lr_at(55, c) == pytest.approx(0.55)
    assert lr_at(40, c) == pytest.approx(1.0 - 0.9 * 30 / 90)


def test_constant_is_flat_after_warmup():
    c = cfg(schedule="constant")
    assert set(curve(c)[c.warmup_steps :]) == {1.0}


@pytest.mark.parametrize("shape", ["linear", "sqrt"])
def test_wsd_is_flat_then_decays_over_the_last_fraction(shape):
    c = cfg(schedule="wsd", decay_fraction=0.2, decay_shape=shape)
    assert wsd_decay_start(c) == 80
    lrs = curve(c)
    assert set(lrs[10:81]) == {1.0}  # stable phase, including the first decay step (q = 0)
    assert lrs[100] == pytest.approx(0.1)
    q = (90 - 80) / 20
    expected = 1.0 - 0.9 * q if shape == "linear" else 0.1 + 0.9 * (1 - math.sqrt(q))
    assert lrs[90] == pytest.approx(expected)


def test_wsd_sqrt_drops_faster_early_than_linear():
    lin, sq = cfg(schedule="wsd", decay_shape="linear"), cfg(schedule="wsd", decay_shape="sqrt")
    assert lr_at(85, sq) < lr_at(85, lin)


def test_no_warmup_starts_at_the_peak():
    c = cfg(schedule="cosine", warmup_steps=0)
    assert lr_at(0, c) == pytest.approx(1.0)


def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"train\.schedule.*constant, cosine, linear, wsd"):
        cfg(schedule="exponential")
    with pytest.raises(UnknownNameError, match="known lr schedule names"):
        SCHEDULES.get("exponential")


def test_a_registered_schedule_is_usable_by_name():
    @SCHEDULES.register("half")
    def half(step, c):
        return c.lr / 2

    try:
        assert lr_at(50, cfg(schedule="half")) == 0.5
    finally:
        SCHEDULES.unregister("half")
