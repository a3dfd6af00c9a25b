"""The schedule's numbers written out by hand: the Table-1 protocol (200 epochs: warm-up 5, x0.01 at 160
and 180, DRW at 160), its scaled form, the cosine schedule, and the epoch DRW switches on. Fast: these
are the tests the mutation run (docs/testing.md) relies on for gssl.schedule."""

import math

import pytest

from gssl.config import parse_set
from gssl.presets import resolve
from gssl.schedule import drw_on, lr_at, scaled_schedule


def _cfg(*sets):
    return resolve("cifar10-lt0.01-ldam-drw", sets=[parse_set(s) for s in sets])


TABLE1 = {
    0: 0.02,
    1: 0.04,
    2: 0.06,
    3: 0.08,
    4: 0.1,
    5: 0.1,
    159: 0.1,
    160: 1e-3,
    179: 1e-3,
    180: 1e-5,
    199: 1e-5,
}


@pytest.mark.parametrize("epoch", sorted(TABLE1))
def test_table1_learning_rate_warms_up_then_decays_twice(epoch):
    assert math.isclose(lr_at(_cfg(), epoch), TABLE1[epoch], rel_tol=1e-12)


def test_table1_drw_switches_on_at_160_exactly():
    cfg = _cfg()
    assert [drw_on(cfg, epoch) for epoch in (0, 158, 159, 160, 161, 199)] == [0, 0, 0, 1, 1, 1]
    assert not any(drw_on(_cfg("loss.drw_epoch=null"), epoch) for epoch in (0, 160, 199))


def test_a_45_epoch_run_keeps_the_shape_scaled():
    cfg = _cfg("optim.epochs=45", "optim.base_epochs=200")  # 5 -> 1, 160 -> 36, 180 -> 40.5 -> 40
    assert scaled_schedule(cfg.optim, cfg.loss.drw_epoch) == (1, [36, 40], 36)
    lrs = [lr_at(cfg, epoch) for epoch in range(45)]
    assert (
        lrs[:36] == [0.1] * 36
        and lrs[36:40] == pytest.approx([1e-3] * 4)
        and lrs[40:] == pytest.approx([1e-5] * 5)
    )
    assert [drw_on(cfg, epoch) for epoch in (35, 36)] == [False, True]


def test_no_warm_up_starts_at_the_full_rate():
    cfg = _cfg("optim.warmup_epochs=0")
    assert lr_at(cfg, 0) == 0.1 and lr_at(cfg, 160) == pytest.approx(1e-3)


def test_cosine_falls_from_the_full_rate_to_zero_after_the_warm_up():
    cfg = _cfg("optim.schedule=cosine", "optim.epochs=25", "optim.base_epochs=25", "optim.warmup_epochs=5")
    assert [lr_at(cfg, epoch) for epoch in range(5)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lr_at(cfg, 5) == pytest.approx(0.1)  # cos(0): the full rate
    assert lr_at(cfg, 15) == pytest.approx(0.05)  # halfway through the 20 cosine epochs
    assert lr_at(cfg, 24) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert lr_at(cfg, 25) == pytest.approx(0.0, abs=1e-12)
