"""An engine reporting more completion tokens than the request allowed is billed what was possible, and flagged.

The fake upstream reports the usage a test sets (``Behaviour.usage``), in the OpenAI wire format; the ledger row
holds the clamped count and its cost, the metric ``lmops_usage_implausible_total`` counts the answer, and a
warning names the replica and both numbers. The clamp itself (serving/usage_check.py) is checked for counts that
are not counts, which the HTTP engine already refuses as a 502 before they reach it.
"""

from __future__ import annotations

import logging

import httpx
import pytest

from lmops.observability.metrics import Metrics
from lmops.serving.context import RequestContext
from lmops.serving.usage_check import plausible_usage

from .helpers import CHAT, ledger_rows

SAYS = {"prompt_tokens": 7, "completion_tokens": 5000, "total_tokens": 5007}  # the upstream's claim


def implausible(gateway, reason: str = "over_max_tokens") -> float:
    metrics = gateway.services.core.metrics
    replica = f"{gateway.services.settings.models[0].replicas[0]}"
    value = metrics.registry.get_sample_value("lmops_usage_implausible_total",
                                              {"model": "fake", "replica": replica, "reason": reason})
    return value or 0.0


def billed(gateway, key_id: str) -> dict:
    (row,) = [r for r in ledger_rows(gateway.services.settings.database_url, wait_for=1) if r["key_id"] == key_id]
    return row


@pytest.mark.parametrize("stream", [False, True])
def test_more_completion_tokens_than_max_tokens_are_billed_as_max_tokens(start_gateway, upstream, caplog, stream):
    upstream[1].behaviour.usage = SAYS
    gw = start_gateway()
    key, row = gw.key(gw.team()["id"])
    client = gw.client(key)
    with caplog.at_level(logging.WARNING, logger="lmops.usage"):
        if stream:
            chunks = list(client.chat.completions.create(model="fake", messages=CHAT, max_tokens=16, stream=True,
                                                         stream_options={"include_usage": True}))
            assert chunks[-1].usage.completion_tokens == 5000  # what the upstream said reaches the client as it is
        else:
            answer = client.chat.completions.create(model="fake", messages=CHAT, max_tokens=16)
            assert answer.usage.completion_tokens == 5000
    entry = billed(gw, row["id"])
    assert (entry["status"], entry["stream"]) == (200, stream)
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (7, 16)
    assert entry["cost_usd"] == pytest.approx(7 * 0.001 + 16 * 0.002)
    assert implausible(gw) == 1
    (warning,) = [r.getMessage() for r in caplog.records if "implausible usage" in r.getMessage()]
    replica = gw.services.settings.models[0].replicas[0]
    assert f"replica {replica} of model fake" in warning
    assert "completion_tokens 5000 > max_tokens 16 x 1 choice(s)" in warning
    assert "billed 7 prompt and 16 completion tokens" in warning


def test_n_choices_best_of_and_a_list_of_prompts_allow_max_tokens_each(start_gateway, upstream):
    """A completion of 2 prompts with n=2 has 4 choices: up to 40 tokens at max_tokens 10; 5000 is billed as 40.
    ``best_of`` candidates (generated, some providers bill them) count when more than ``n``."""
    upstream[1].behaviour.usage = SAYS
    gw = start_gateway()
    key, row = gw.key(gw.team()["id"])
    client = gw.client(key)
    client.completions.create(model="fake", prompt=["a", "b"], n=2, max_tokens=10)
    client.completions.create(model="fake", prompt="a", n=2, best_of=3, max_tokens=10)
    rows = ledger_rows(gw.services.settings.database_url, wait_for=2)
    assert [r["completion_tokens"] for r in rows if r["key_id"] == row["id"]] == [40, 30]
    assert implausible(gw) == 2


def test_counts_within_the_limit_or_without_one_are_billed_as_reported(start_gateway, upstream):
    upstream[1].behaviour.usage = {"prompt_tokens": 7, "completion_tokens": 32, "total_tokens": 39}
    gw = start_gateway()
    key, row = gw.key(gw.team()["id"])
    client = gw.client(key)
    client.chat.completions.create(model="fake", messages=CHAT, max_tokens=16, n=2)  # 2 x 16: exactly the limit
    client.chat.completions.create(model="fake", messages=CHAT)  # no max_tokens, no model default: no limit
    rows = ledger_rows(gw.services.settings.database_url, wait_for=2)
    assert [r["completion_tokens"] for r in rows if r["key_id"] == row["id"]] == [32, 32]
    assert implausible(gw) == 0


def test_the_metric_is_exported(start_gateway, upstream):
    upstream[1].behaviour.usage = SAYS
    gw = start_gateway()
    key, _ = gw.key(gw.team()["id"])
    gw.client(key).chat.completions.create(model="fake", messages=CHAT, max_tokens=16)
    text = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {gw.admin_key}"}).text
    replica = gw.services.settings.models[0].replicas[0]
    assert (f'lmops_usage_implausible_total{{model="fake",reason="over_max_tokens",replica="{replica}"}} 1.0'
            in text)


@pytest.mark.parametrize("usage, expected, reasons", [
    ({"prompt_tokens": 3, "completion_tokens": 4}, (3, 4), set()),
    ({"prompt_tokens": 3.0, "completion_tokens": 4.0}, (3, 4), set()),  # some servers write whole floats
    (None, (0, 0), set()),
    ({"prompt_tokens": 3}, (3, 0), set()),  # embeddings report no completion
    ({"prompt_tokens": -3, "completion_tokens": 4}, (0, 4), {"not_a_count"}),
    ({"prompt_tokens": 3, "completion_tokens": 2.5}, (3, 0), {"not_a_count"}),
    ({"prompt_tokens": "3", "completion_tokens": True}, (0, 0), {"not_a_count"}),
    ({"prompt_tokens": 3, "completion_tokens": float("nan")}, (3, 0), {"not_a_count"}),
    ([3, 4], (0, 0), {"not_a_count"}),
    ({"prompt_tokens": 3, "completion_tokens": 21}, (3, 20), {"over_max_tokens"}),
    ({"prompt_tokens": -1, "completion_tokens": 21}, (0, 20), {"over_max_tokens", "not_a_count"}),
])
def test_plausible_usage_clamps_what_cannot_be_a_count(usage, expected, reasons, caplog):
    metrics = Metrics()
    ctx = RequestContext(request_id="r1", endpoint="chat.completions", model="m", max_tokens=10, choices=2,
                         replica="http://up/v1")
    with caplog.at_level(logging.WARNING, logger="lmops.usage"):
        plausible_usage(ctx, usage, metrics)
    assert (ctx.prompt_tokens, ctx.completion_tokens) == expected
    for reason in ("over_max_tokens", "not_a_count"):
        count = metrics.registry.get_sample_value("lmops_usage_implausible_total",
                                                  {"model": "m", "replica": "http://up/v1", "reason": reason})
        assert (count or 0) == (1 if reason in reasons else 0)
    assert len([r for r in caplog.records if "implausible usage" in r.getMessage()]) == (1 if reasons else 0)
