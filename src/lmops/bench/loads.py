"""Load shapes: the concurrency levels of a sweep and the arrival times of a request rate.

Arrivals are never "everything at t=0": at a request rate the gaps between requests are drawn from a gamma
distribution with shape ``burstiness`` and mean ``1/rate`` (shape 1 is a Poisson process; below 1 burstier,
above 1 more regular), from a seeded generator so that two runs (and two targets) see the same schedule.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def parse_levels(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4); ValueError for anything but positive integers."""
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"concurrency levels are positive integers separated by commas, not {text!r}") from None
    if not levels or any(n < 1 for n in levels):
        raise ValueError(f"concurrency levels are positive integers separated by commas, not {text!r}")
    return levels


def gaps(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Seconds between consecutive arrivals at ``rate`` per second: gamma(shape=burstiness, scale=1/(rate*shape))."""
    if rate <= 0 or burstiness <= 0:
        raise ValueError("the request rate and the burstiness must be positive")
    rng = random.Random(seed)
    scale = 1.0 / (rate * burstiness)
    while True:
        yield rng.gammavariate(burstiness, scale)


def arrival_times(count: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """The first ``count`` arrival times (seconds from the start); the first request leaves at once."""
    times, t = [], 0.0
    for gap, _ in zip(gaps(rate, burstiness, seed), range(count), strict=False):
        times.append(t)
        t += gap
    return times
