"""Budgets under concurrency: reserve the worst case before, settle to the real cost after."""

from __future__ import annotations

import concurrent.futures

import openai
import pytest

from .helpers import CHAT, ledger_rows

COST = 7 * 0.001 + 10 * 0.002  # one answer of the fake upstream at the test prices


def _one(client: openai.OpenAI) -> str:
    try:
        client.chat.completions.create(model="fake", messages=CHAT, max_tokens=10)
        return "ok"
    except openai.RateLimitError as exc:
        return str(exc.code)


@pytest.mark.parametrize("counters", ["memory", "redis"])
def test_50_concurrent_requests_against_a_nearly_spent_budget(start_gateway, database_url, upstream, counters,
                                                              request):
    extra = {"redis_url": request.getfixturevalue("redis_url")} if counters == "redis" else {}
    gateway = start_gateway(database_url=database_url, **extra)
    upstream[1].behaviour.delay = 0.05  # requests overlap
    budget = 1.0
    key, _ = gateway.key(gateway.team()["id"], budget_usd=budget, budget_period="month")
    client = gateway.client(key)
    before = 0
    while before < 30:  # spend most of it: $0.81 of $1.00
        assert _one(client) == "ok"
        before += 1
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(lambda _: _one(client), range(50)))
    served = outcomes.count("ok")
    assert outcomes.count("budget_exceeded") == 50 - served
    assert 1 <= served < 50
    rows = ledger_rows(gateway.services.settings.database_url, wait_for=before + 50)
    billed = [r for r in rows if r["status"] == 200]
    assert len(billed) == before + served
    spent = sum(r["cost_usd"] for r in billed)
    # The bound of the issue is "no more than what was in flight"; reserving the worst case gives zero overshoot.
    assert spent <= budget + 1e-9
    # And what is left is less than one worst-case reservation: the budget was used, not wasted.
    assert budget - spent < 0.2


def test_spend_survives_a_restart(start_gateway, database_url):
    first = start_gateway(database_url=database_url)
    key, _ = first.key(first.team()["id"], budget_usd=0.13, budget_period="day")
    client = first.client(key)
    assert _one(client) == "ok"
    assert _one(client) == "ok"  # $0.054 spent
    first.srv.stop()
    second = start_gateway(database_url=database_url)
    client = second.client(key)
    # $0.054 + a ~$0.095 worst-case reservation no longer fits the $0.13 budget: the spend was reloaded.
    assert _one(client) == "budget_exceeded"
    assert sum(r["cost_usd"] for r in ledger_rows(database_url, wait_for=3)) == pytest.approx(2 * COST)
