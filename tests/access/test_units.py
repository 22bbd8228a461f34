"""Pricing, key text and the two counter backends giving the same answers."""

from __future__ import annotations

import random
import secrets

import pytest

from lmops.access.counters import Check, Delta, MemoryCounters, RedisCounters
from lmops.access.keys import KeyHasher, bearer_token, key_prefix
from lmops.config import PriceConfig
from lmops.usage.pricing import Price, PriceBook


def test_price_derived_from_gpu_cost_and_throughput():
    # A $2.00/hour GPU decoding 1000 tokens/s: 3.6M tokens an hour, so $0.5556 per 1M output tokens.
    price = Price.from_config(PriceConfig(gpu_hour_usd=2.0, output_tokens_per_second=1000,
                                          input_tokens_per_second=10000))
    assert price.output_per_1m == pytest.approx(2.0 / 3.6)
    assert price.input_per_1m == pytest.approx(2.0 / 36)
    book = PriceBook({"m": PriceConfig(input=0.5, output=1.5)})
    assert book.cost("m", 1_000_000, 2_000_000) == pytest.approx(3.5)
    assert book.cost("unpriced", 10, 10) == 0
    with pytest.raises(ValueError):
        PriceConfig(input=1, gpu_hour_usd=2, output_tokens_per_second=5)


def test_key_text_hash_and_prefix():
    hasher = KeyHasher(secrets.token_bytes(32))
    key = hasher.new_key()
    assert key.text.startswith(f"lmops-{key.prefix}-") and key_prefix(key.text) == key.prefix
    assert hasher.matches(key.text, key.hash) and not hasher.matches(key.text + "x", key.hash)
    assert key.text not in key.hash and len(key.hash) == 64
    assert KeyHasher(secrets.token_bytes(32)).hash(key.text) != key.hash  # keyed: another secret, another hash
    for bad in ("sk-abc", "lmops-ABCDEFGH-" + "x" * 30, "lmops-abc-" + "x" * 30, "lmops-abcdefgh-short"):
        assert key_prefix(bad) is None
        with pytest.raises(ValueError):
            hasher.adopt(bad)
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None and bearer_token(None) is None


def _script(seed: int) -> list[tuple[str, object, tuple[float, ...]]]:
    """Admissions of random subsets of checks (a budget reserving a random amount) and settlements."""
    rng = random.Random(seed)
    steps: list[tuple[str, object, tuple[float, ...]]] = []
    checks = [Check("add", "rpm", 20, 0, 60), Check("below", "tpm", 500), Check("add", "par", 3, 0, 600),
              Check("add", "spent", 50.0, 1, 0)]
    for _ in range(300):
        steps.append(("admit", rng.sample(checks, rng.randint(1, 4)), (1.0, rng.uniform(0, 5))))
        if rng.random() < 0.5:
            steps.append(("apply", [Delta("par", 0, 600), Delta("tpm", 1, 60), Delta("spent", 2)],
                          (-1.0, float(rng.randint(0, 40)), rng.uniform(-2, 2))))
    return steps


async def _play(counters, steps, prefix: str) -> list[tuple[bool, int, tuple[float, ...]]]:
    outcomes = []
    await counters.seed(prefix + "spent", 1.5, 0)
    for op, items, amounts in steps:
        if op == "admit":
            a = await counters.admit([c._replace(key=prefix + c.key) for c in items], amounts)
            outcomes.append((a.ok, a.failed, tuple(round(v, 6) for v in a.values)))
        else:
            counters.apply([d._replace(key=prefix + d.key) for d in items], amounts)
            await counters.drain()
    return outcomes


async def test_memory_and_redis_counters_agree(redis_url):
    steps = _script(3)
    redis = RedisCounters(redis_url)
    try:
        remote = await _play(redis, steps, f"t{secrets.token_hex(4)}:")
    finally:
        await redis.close()
    local = await _play(MemoryCounters(), steps, "")
    assert local == remote
    assert any(not ok for ok, _, _ in local) and any(ok for ok, _, _ in local)


async def test_memory_counters_expire_purge_and_reuse_prepared_cells():
    now = [1000.0]
    counters = MemoryCounters(clock=lambda: now[0])
    checks = (Check("add", "rpm", 2, 0, 60), Check("below", "tpm", 100), Check("add", "par", 5, 0, 0))
    deltas = (Delta("par", 0, 0), Delta("tpm", 1, 60))
    assert (await counters.admit(checks, (1.0,))).values == (1.0, 0.0, 1.0)
    counters.apply(deltas, (-1.0, 60.0))  # the same sequences again: their cells are reused
    assert (await counters.admit(checks, (1.0,))).values == (2.0, 60.0, 1.0)
    counters.apply(deltas, (-1.0, 50.0))
    refused = await counters.admit(checks, (1.0,))  # rpm 3 > 2 and tpm 110 >= 100: nothing is added
    assert (refused.ok, refused.failed, refused.values) == (False, 0, (3.0, 110.0, 1.0))
    assert counters.value("rpm") == 2.0 and counters.value("par") == 0.0
    now[0] += 61  # the window keys expire; the parallel counter (no ttl) does not
    assert not await counters.exists("rpm") and counters.value("tpm") == 0.0
    assert (await counters.admit(checks, (1.0,))).values == (1.0, 0.0, 1.0)
    now[0] += 61  # a purge drops expired cells and forgets prepared sequences, which then find new cells
    assert (await counters.admit(checks, (1.0,))).values == (1.0, 0.0, 2.0)
    counters.apply(deltas, (-1.0, 5.0))
    assert sorted(counters.keys()) == ["par", "rpm", "tpm"] and counters.value("tpm") == 5.0
    await counters.seed("spent", 7.0, 0)
    await counters.seed("spent", 9.0, 0)  # only when missing
    assert counters.value("spent") == 7.0


@pytest.mark.parametrize(("prices", "warned"), [
    ({"big": {"input": 1, "output": 2}}, "small"),  # one model priced, the other not: said at start
    ({}, None),  # no billing in dollars at all (the laptop default): nothing to say
    ({"big": {"input": 1, "output": 2}, "small": {"input": 1, "output": 1}}, None),
])
async def test_start_warns_about_models_without_a_price_when_others_have_one(tmp_path, caplog, prices, warned):
    import logging

    from lmops.testing.access import running_access
    from lmops.testing.settings import make_settings

    models = [{"name": n, "engine": "openai", "replicas": ["http://127.0.0.1:9/v1"]} for n in ("big", "small")]
    settings = make_settings(tmp_path, models, access={"enabled": True, "prices": prices})
    with caplog.at_level(logging.WARNING, logger="lmops.access"):
        async with running_access(settings):  # serving settings: start() bootstraps, and warns
            pass
    said = [r.getMessage() for r in caplog.records if "no price" in r.getMessage()]
    assert len(said) == (0 if warned is None else 1)
    if warned:
        assert warned in said[0] and "big" not in said[0]
