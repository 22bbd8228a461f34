"""Arrival schedules: a Poisson process at the asked rate, gamma burstiness, reproducible from the seed."""

from __future__ import annotations

import statistics

import pytest

from lmops.bench.loads import arrival_times, parse_levels


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_poisson_arrivals_have_the_asked_mean_rate_and_exponential_gaps():
    times = arrival_times(20001, rate=50.0, burstiness=1.0, seed=1)
    gaps = _gaps(times)
    assert times[0] == 0.0
    assert 20000 / times[-1] == pytest.approx(50.0, rel=0.03)
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.05)  # exponential: CV 1


@pytest.mark.parametrize(("burstiness", "cv"), [(0.25, 2.0), (4.0, 0.5)])
def test_burstiness_is_the_gamma_shape(burstiness, cv):
    gaps = _gaps(arrival_times(20001, rate=10.0, burstiness=burstiness, seed=2))
    assert statistics.fmean(gaps) == pytest.approx(0.1, rel=0.05)  # the rate does not change
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(cv, rel=0.07)  # CV = 1/sqrt(shape)


def test_the_schedule_is_reproducible_from_its_seed():
    assert arrival_times(100, 5.0, 0.5, seed=7) == arrival_times(100, 5.0, 0.5, seed=7)
    assert arrival_times(100, 5.0, 0.5, seed=7) != arrival_times(100, 5.0, 0.5, seed=8)
    with pytest.raises(ValueError):
        arrival_times(3, 0.0)


def test_levels():
    assert parse_levels("1,2, 4") == (1, 2, 4)
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(ValueError):
            parse_levels(bad)
