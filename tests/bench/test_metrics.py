"""The bench's maths on synthetic streams with known timings: latencies, bands, percentiles, goodput, throughput."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lmops.bench.client import Record, fill_timings
from lmops.bench.metrics import band_of, band_stats, level_stats, meets, percentile
from lmops.bench.options import parse_slo, parse_target, parse_targets
from lmops.bench.runner import Slice


def stream(target: str = "a", *, scheduled: float = 1.0, first: float = 1.2, gap: float = 0.05, tokens: int = 5,
           usage: int | None = None, level: str = "c=1", error: str | None = None) -> Record:
    """A request due at ``scheduled`` whose ``tokens`` content chunks arrive from ``first``, ``gap`` apart, and whose
    stream ends one gap after the last chunk (all on the run clock)."""
    rec = Record(target, level, 0, 0, 0, "dataset", scheduled)
    if error:
        rec.error = error
        return rec
    stamps = [first + i * gap for i in range(tokens)]
    fill_timings(rec, stamps, stamps[-1] + gap, {"prompt_tokens": 3, "completion_tokens": usage} if usage else None)
    return rec


def test_latencies_of_a_stream_count_from_its_scheduled_time():
    rec = stream(scheduled=1.0, first=1.2, gap=0.05, tokens=5, usage=5)
    assert rec.ttft == pytest.approx(0.2)  # queueing before the first token counts
    assert rec.ttst == pytest.approx(0.25)
    assert rec.itl == pytest.approx([0.05] * 4)
    assert rec.e2e == pytest.approx(0.45)  # ends at 1.45
    assert rec.tpot == pytest.approx((0.45 - 0.2) / 4)
    assert rec.tok_per_s == pytest.approx(5 / 0.45)
    assert (rec.output_tokens, rec.tokens_from, rec.prompt_tokens) == (5, "usage", 3)


def test_usage_wins_over_chunks_and_chunks_count_when_there_is_no_usage():
    several = stream(tokens=4, usage=12)  # an engine that streams several tokens a chunk
    assert (several.output_tokens, several.tokens_from) == (12, "usage")
    assert several.tpot == pytest.approx((several.e2e - several.ttft) / 11)
    counted = stream(tokens=4, usage=None)
    assert (counted.output_tokens, counted.tokens_from) == (4, "chunks")
    one = stream(tokens=1, usage=None)
    assert one.ttst is None and one.tpot is None and one.itl == []


@pytest.mark.parametrize(("tokens", "band"), [(0, None), (1, "1-30"), (30, "1-30"), (31, "31-300"), (300, "31-300"),
                                               (301, ">300"), (5000, ">300")])
def test_band_boundaries(tokens, band):
    assert band_of(tokens) == band


def test_percentiles_interpolate_as_numpy_does():
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([float(x) for x in range(1, 12)], 90) == pytest.approx(10.0)
    rng = random.Random(3)
    for n in (2, 5, 101, 1000):
        xs = [rng.expovariate(1.0) for _ in range(n)]
        for q in (50, 90, 99):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_goodput_counts_requests_within_every_slo_and_errors_are_counted_by_kind():
    slo = parse_slo("ttft=500ms,tpot=50ms")
    fast = stream(first=1.1, gap=0.01, tokens=10, usage=10)  # ttft 0.1, tpot 0.01
    slow_start = stream(first=1.6, gap=0.01, tokens=10, usage=10)  # ttft 0.6
    slow_tokens = stream(first=1.1, gap=0.08, tokens=10, usage=10)  # tpot 0.08
    assert meets(fast, slo) and not meets(slow_start, slo) and not meets(slow_tokens, slo)
    records = [fast, slow_start, slow_tokens, stream(error="timeout"), stream(error="http_503"),
               stream(error="http_503")]
    [row] = level_stats(records, [Slice("a", "c=1", 1.0, seconds=2.0, cpu_seconds=1.5)], slo)
    assert (row.requests, row.completed) == (6, 3)
    assert row.errors == {"timeout": 1, "http_503": 2}
    assert row.req_per_s == pytest.approx(1.5)
    assert row.output_tok_per_s == pytest.approx(15.0)
    assert row.goodput_req_per_s == pytest.approx(0.5)
    assert row.goodput_fraction == pytest.approx(1 / 3)
    assert row.latency["ttft"]["p50"] == pytest.approx(0.1)
    assert row.latency["ttft"]["p99"] == pytest.approx(percentile([0.1, 0.6, 0.1], 99))
    assert row.latency["itl"]["p50"] == pytest.approx(0.01)  # 9 gaps of 0.01 twice, 9 of 0.08 once
    assert row.tokens_from == ["usage"]
    assert row.client_cpu == pytest.approx(0.75)  # the client's CPU use over the level: 3/4 of a core


def test_an_itl_slo_bounds_the_largest_gap():
    rec = stream(gap=0.02, tokens=3, usage=3)
    rec.itl[1] = 0.3
    assert not meets(rec, {"itl": 0.1}) and meets(rec, {"itl": 0.5})


def test_levels_are_per_target_and_bands_average_each_requests_speed():
    records = [stream("a", tokens=10, usage=10, gap=0.1), stream("a", tokens=10, usage=10, gap=0.05),
               stream("a", tokens=2, usage=400, gap=0.5), stream("b", tokens=2, usage=100, gap=0.1),
               stream("b", error="connect")]
    rows = level_stats(records, [Slice("a", "c=1", 1, 1.0), Slice("b", "c=1", 1, 4.0)], {})
    assert [(r.target, r.completed, r.output_tok_per_s) for r in rows] == [("a", 3, 420.0), ("b", 1, 25.0)]
    bands = {(b.target, b.band): b for b in band_stats(records)}
    a_short = bands[("a", "1-30")]
    speeds = [10 / (0.2 + 10 * 0.1), 10 / (0.2 + 10 * 0.05)]  # tokens / (ttft + the rest of the stream)
    assert a_short.requests == 2 and a_short.mean_tok_per_s == pytest.approx(sum(speeds) / 2)
    assert bands[("a", ">300")].requests == 1 and bands[("a", "31-300")].requests == 0
    assert bands[("a", "31-300")].mean_tok_per_s is None
    assert bands[("b", "31-300")].mean_tok_per_s == pytest.approx(100 / 0.4)


def test_slo_parsing():
    assert parse_slo("ttft=500ms, tpot=50ms") == {"ttft": 0.5, "tpot": 0.05}
    assert parse_slo("e2e=2s,itl=30") == {"e2e": 2.0, "itl": 0.03}
    for bad in ("ttft", "latency=5ms", "ttft=fast", "ttft=5m", ""):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_target_parsing():
    t = parse_target("vllm=http://gpu:8000,model=llama")
    assert (t.name, t.url, t.model) == ("vllm", "http://gpu:8000/v1/chat/completions", "llama")
    assert t.models_url == "http://gpu:8000/v1/models"
    assert parse_target("x=https://h/v1/").url == "https://h/v1/chat/completions"
    assert parse_target("x=http://h/api/v1/chat/completions").url == "http://h/api/v1/chat/completions"
    bare = parse_target("http://h:1", 2)
    assert (bare.name, bare.url) == ("t3", "http://h:1/v1/chat/completions")
    for bad in ("x=ftp://h", "x=h:8000", "x=http://h,temperature=1", "x y=http://h"):
        with pytest.raises(ValueError):
            parse_target(bad)
    with pytest.raises(ValueError, match="differ"):
        parse_targets(["a=http://h", "a=http://g"])
