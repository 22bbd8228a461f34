"""Streams are billed exactly from the engine's final usage chunk; a cancelled stream for what was delivered."""

from __future__ import annotations

import time

import pytest

from .helpers import CHAT, ledger_rows


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_is_billed_from_the_final_usage_chunk(gateway, include_usage):
    key, row = gateway.key(gateway.team()["id"])
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = gateway.client(key).chat.completions.create(model="fake", messages=CHAT, max_tokens=20, stream=True,
                                                         **options)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The quick brown fox jumps over the lazy dog."
    if include_usage:
        assert chunks[-1].usage.completion_tokens == 10
    (entry,) = [r for r in ledger_rows(gateway.services.settings.database_url, wait_for=1) if r["key_id"] == row["id"]]
    assert (entry["stream"], entry["status"], entry["prompt_tokens"], entry["completion_tokens"]) == (True, 200, 7, 10)
    assert entry["cost_usd"] == pytest.approx(7 * 0.001 + 10 * 0.002)


def test_stream_cancelled_by_the_client_is_billed_for_what_was_generated(gateway, upstream):
    upstream[1].behaviour.chunk_delay = 0.3
    key, row = gateway.key(gateway.team()["id"], budget_tokens=10_000, budget_period="total")
    stream = gateway.client(key).chat.completions.create(model="fake", messages=CHAT, max_tokens=20, stream=True)
    received = []
    for chunk in stream:
        received.append(chunk.choices[0].delta.content)
        if len(received) == 3:
            break
    stream.close()
    (entry,) = [r for r in ledger_rows(gateway.services.settings.database_url, wait_for=1, timeout=10)
                if r["key_id"] == row["id"]]
    assert received == ["The", " quick", " brown"]
    assert entry["status"] == 499
    assert entry["completion_tokens"] == 3
    assert entry["cost_usd"] == pytest.approx(3 * 0.002)
    # The budget's reservation was replaced by what was billed.
    access = gateway.services.access
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        counters = access.guard.counters
        spent = {k: counters.value(k) for k in counters.keys() if k.endswith(row["id"] + ":total")}
        if list(spent.values()) == [3.0]:
            break
        time.sleep(0.05)
    assert list(spent.values()) == [3.0]
