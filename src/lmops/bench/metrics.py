"""The numbers of a bench run, from its request records: per level and per output-length band.

Throughput at a level is what finished divided by the time the target spent at that level (its rounds' wall
times). Goodput counts only the requests that met every SLO. A band's speed is the mean over its requests of
output tokens / end-to-end latency (queueing included): the speed each user saw, as the engine study reports it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmops.bench.client import Record
from lmops.bench.runner import Slice

BANDS = (("1-30", 1, 30), ("31-300", 31, 300), (">300", 301, math.inf))
LATENCIES = ("ttft", "ttst", "tpot", "itl", "e2e")
QUANTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def band_of(tokens: int) -> str | None:
    """The output-length band a request's output tokens fall in (None for no tokens)."""
    return next((name for name, lo, hi in BANDS if lo <= tokens <= hi), None)


def meets(rec: Record, slo: dict[str, float]) -> bool:
    """Whether a request succeeded within every SLO (seconds; ``itl`` bounds its largest gap)."""
    if rec.error is not None:
        return False
    for key, limit in slo.items():
        value = max(rec.itl, default=0.0) if key == "itl" else getattr(rec, key)
        if value is not None and value > limit:
            return False
    return True


def _stats(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"p{q}": percentile(values, q) for q in QUANTILES}
    out["mean"] = sum(values) / len(values) if values else None
    return out


@dataclass
class LevelStats:
    target: str
    level: str
    value: float  # the concurrency, or the request rate
    seconds: float
    requests: int  # sent and answered or failed (dropped in-flight requests are not counted)
    completed: int
    errors: dict[str, int]
    req_per_s: float
    output_tok_per_s: float
    goodput_req_per_s: float
    goodput_fraction: float | None
    mean_output_tokens: float | None
    tokens_from: list[str]
    client_cpu: float  # the bench client's CPU use meanwhile, in cores (near 1: the client may be the limit)
    latency: dict[str, dict[str, float | None]] = field(default_factory=dict)  # ttft/... -> p50/p90/p99/mean


@dataclass
class BandStats:
    target: str
    band: str
    requests: int
    mean_tok_per_s: float | None
    p50_tok_per_s: float | None


def level_stats(records: Iterable[Record], slices: Iterable[Slice], slo: dict[str, float]) -> list[LevelStats]:
    """One row per (target, level), in the order the slices ran."""
    by_key: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        by_key.setdefault((r.target, r.level), []).append(r)
    rows = []
    for s in slices:
        recs = by_key.get((s.target, s.level), [])
        ok = [r for r in recs if r.error is None]
        secs = s.seconds or math.nan
        tokens = sum(r.output_tokens for r in ok)
        good = sum(meets(r, slo) for r in ok)
        latency = {k: _stats([v for r in ok if (v := getattr(r, k)) is not None]) for k in LATENCIES if k != "itl"}
        latency["itl"] = _stats([x for r in ok for x in r.itl])
        rows.append(LevelStats(
            s.target, s.level, s.value, s.seconds, len(recs), len(ok),
            dict(Counter(r.error for r in recs if r.error is not None)),
            _rate(len(ok), secs), _rate(tokens, secs), _rate(good, secs), good / len(ok) if ok else None,
            tokens / len(ok) if ok else None, sorted({r.tokens_from for r in ok}),
            s.cpu_seconds / s.seconds if s.seconds else 0.0, latency))
    return rows


def _rate(n: float, seconds: float) -> float:
    return 0.0 if not seconds or math.isnan(seconds) else n / seconds


def band_stats(records: Iterable[Record]) -> list[BandStats]:
    """Per target and output-length band: how many requests, and their mean (and median) output tokens/s."""
    speeds: dict[tuple[str, str], list[float]] = {}
    targets: list[str] = []
    for r in records:
        if r.target not in targets:
            targets.append(r.target)
        band = band_of(r.output_tokens)
        if r.error is None and band and r.tok_per_s is not None:
            speeds.setdefault((r.target, band), []).append(r.tok_per_s)
    rows = []
    for t in targets:
        for band, _, _ in BANDS:
            xs = speeds.get((t, band), [])
            rows.append(BandStats(t, band, len(xs), sum(xs) / len(xs) if xs else None, percentile(xs, 50)))
    return rows


def record_of(line: dict[str, Any]) -> Record:
    """A Record from its JSONL line (reports rebuilt from requests.jsonl)."""
    return Record(**line)
