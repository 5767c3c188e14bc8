"""Teacher schedules as pure functions of the step: endpoints, shape, monotonicity."""
import math

import pytest

from sslscale.schedules import cosine_momentum, cosine_weight_decay, teacher_temperature


def test_cosine_momentum_follows_byol_formula_from_base_to_one():
    taus = [cosine_momentum(k, 100, base=0.99) for k in range(0, 121)]
    assert taus[0] == pytest.approx(0.99) and taus[100] == pytest.approx(1.0) and taus[120] == pytest.approx(1.0)
    assert taus[37] == pytest.approx(1 - 0.01 * (math.cos(math.pi * 37 / 100) + 1) / 2)
    assert taus[50] == pytest.approx(0.995)
    assert all(a <= b for a, b in zip(taus, taus[1:])) and taus[1] > taus[0]
    assert cosine_momentum(0, 10) == pytest.approx(0.996)  # BYOL's default base
    assert cosine_momentum(10, 10, base=0.5, final=0.9) == pytest.approx(0.9)


def test_teacher_temperature_warms_up_linearly_then_holds():
    temps = [teacher_temperature(s, warmup=30, start=0.04, end=0.07) for s in range(0, 61)]
    assert temps[0] == pytest.approx(0.04) and temps[15] == pytest.approx(0.055) and temps[30] == 0.07
    assert set(temps[30:]) == {0.07} and all(a < b for a, b in zip(temps[:30], temps[1:31]))
    assert teacher_temperature(0, warmup=0, start=0.04, end=0.07) == 0.07


def test_cosine_weight_decay_rises_from_start_to_end():
    wds = [cosine_weight_decay(s, total=50, start=0.04, end=0.4) for s in range(0, 60)]
    assert wds[0] == pytest.approx(0.04) and wds[25] == pytest.approx(0.22) and wds[50] == pytest.approx(0.4)
    assert all(a <= b for a, b in zip(wds, wds[1:])) and wds[-1] == pytest.approx(0.4)
    falling = [cosine_weight_decay(s, total=50, start=0.4, end=0.04) for s in range(0, 51)]
    assert all(a >= b for a, b in zip(falling, falling[1:])) and falling[-1] == pytest.approx(0.04)
