"""Request records on SQLite and PostgreSQL: migrations, batched writes off the request path."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import openai
import pytest
from sqlalchemy import make_url, select

from lmops.app import create_app
from lmops.store.database import create_engine, current_revision, upgrade
from lmops.testing.fake_openai import Behaviour, FakeOpenAI
from lmops.usage.records import RequestRecord


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.db'}"
    return request.getfixturevalue("pg_url")


def read_records(url: str) -> list[RequestRecord]:
    async def go() -> list[RequestRecord]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(RequestRecord.__table__).order_by("created_at"))).all()
                return list(rows)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def wait_for_records(srv, count: int) -> None:
    services = srv.server.config.app.state.services
    deadline = time.monotonic() + 5
    while services.core.records.written < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_migrations_upgrade_to_head(database_url):
    upgrade(database_url)
    assert current_revision(database_url) is not None
    upgrade(database_url)  # idempotent


def _sync_url(url: str) -> str:
    return url.replace("+asyncpg", "").replace("postgresql://", "postgresql+psycopg://", 1)


def test_ledger_moves_into_the_records_without_losing_a_row(database_url):
    """Migration 0004: a ledger row joins the one record of its request; a ledger row with no such record
    (a reused request id, a dropped record) becomes a record of its own; downgrading gives the ledger back."""
    from datetime import date, datetime, timezone

    from sqlalchemy import create_engine as create_sync_engine, text

    from lmops.store.database import command, alembic_config

    upgrade(database_url, "0003_batch")
    at = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    record = ("INSERT INTO request_records (id, request_id, created_at, endpoint, model, replica, stream, "
              "prompt_tokens, completion_tokens, latency_ms, ttft_ms, status, error) VALUES "
              "(:id, :rid, :at, 'chat.completions', :model, 'http://r1', false, 3, 4, 9.5, 2.5, :status, NULL)")
    ledger = ("INSERT INTO usage_ledger (request_id, created_at, day, team_id, user_id, key_id, model, adapter, "
              "endpoint, stream, prompt_tokens, completion_tokens, cost_usd, latency_ms, status) VALUES "
              "(:rid, :at, :day, 'team_1', 'user_1', 'key_1', 'fake', :adapter, 'chat.completions', false, 3, 4, "
              ":cost, 9.5, :status)")
    engine = create_sync_engine(_sync_url(database_url))
    try:
        with engine.begin() as conn:
            for n, (rid, model, status) in enumerate((("req_a", "fake:lora", 200), ("req_b", "fake", 200),
                                                      ("req_b", "fake", 200), ("req_c", "fake", 401))):
                conn.execute(text(record), {"id": f"{n:032x}", "rid": rid, "at": at, "model": model, "status": status})
            for rid, adapter, cost in (("req_a", "lora", 0.5), ("req_b", None, 0.25), ("req_d", None, 0.125)):
                conn.execute(text(ledger), {"rid": rid, "at": at, "day": date(2026, 3, 1), "adapter": adapter,
                                            "cost": cost, "status": 200})
        upgrade(database_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT request_id, model, adapter, replica, team_id, key_id, cost_usd, day "
                                     "FROM request_records ORDER BY request_id, id")).all()
        day = "2026-03-01"
        assert [(*r[:-1], r[-1] and str(r[-1])) for r in rows] == [
            ("req_a", "fake", "lora", "http://r1", "team_1", "key_1", 0.5, day),  # joined its record
            ("req_b", "fake", None, "http://r1", None, None, None, None),  # two records for one id: left alone
            ("req_b", "fake", None, "http://r1", None, None, None, None),
            ("req_b", "fake", None, None, "team_1", "key_1", 0.25, day),  # ... and the ledger row kept apart
            ("req_c", "fake", None, "http://r1", None, None, None, None),  # never billed
            ("req_d", "fake", None, None, "team_1", "key_1", 0.125, day),  # its record was lost: kept anyway
        ]
        command.downgrade(alembic_config(database_url), "0003_batch")
        with engine.connect() as conn:
            back = conn.execute(text("SELECT request_id, adapter, cost_usd FROM usage_ledger ORDER BY request_id"))
            assert [tuple(r) for r in back] == [("req_a", "lora", 0.5), ("req_b", None, 0.25), ("req_d", None, 0.125)]
            assert conn.execute(text("SELECT count(*) FROM request_records")).scalar() == 4
    finally:
        engine.dispose()
    upgrade(database_url)


def test_every_request_leaves_a_record(database_url, serve, settings_factory):
    up = serve(FakeOpenAI())
    settings = settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}],
                                database_url=database_url)
    srv = serve(create_app(settings))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    ok = client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "hi"}])
    list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    wait_for_records(srv, 3)
    rows = read_records(database_url)
    assert len(rows) == 3
    plain, streamed, missing = rows
    assert plain.request_id == ok.headers["x-request-id"]
    assert (plain.model, plain.status, plain.prompt_tokens, plain.completion_tokens) == ("m", 200, 7, 10)
    assert plain.replica == f"{up.url}/v1" and plain.latency_ms > 0 and plain.ttft_ms is None
    assert streamed.stream and streamed.status == 200 and streamed.completion_tokens == 10
    assert streamed.prompt_tokens == 7  # from the upstream's usage chunk, requested even though the client did not
    assert streamed.ttft_ms is not None and streamed.ttft_ms <= streamed.latency_ms
    assert missing.status == 404 and "missing" in missing.error


@pytest.mark.parametrize("delta", [
    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": "weather", "arguments": "{}"}}]},
    {"reasoning_content": "Let me think."},  # vLLM's reasoning parsers
])
def test_a_streams_first_output_is_any_output_not_only_text(serve, settings_factory, tmp_path, delta):
    """Time to first token, and the count of a stream that came without usage, include tool calls and reasoning."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": None}]}
    up = serve(FakeOpenAI(Behaviour(answer=chunk)))
    url = f"sqlite:///{tmp_path / 'records.db'}"
    srv = serve(create_app(settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}],
                                            database_url=url)))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))
    wait_for_records(srv, 1)
    (row,) = read_records(url)
    assert row.status == 200 and row.ttft_ms is not None and row.completion_tokens == 1


def test_database_outage_never_fails_requests(serve, settings_factory, tmp_path):
    """Rows wait in memory while the database cannot be written; requests are not slowed or failed."""
    up = serve(FakeOpenAI())
    settings = settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}])
    srv = serve(create_app(settings))
    services = srv.server.config.app.state.services
    blocker = sqlite3.connect(make_url(settings.database_url).database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
        for _ in range(5):
            started = time.monotonic()
            assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
            assert time.monotonic() - started < 1.0
        time.sleep(0.3)
        assert services.core.records.pending == 5 and services.core.records.written == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.monotonic() + 5
    while services.core.records.written < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert services.core.records.written == 5


def test_a_reused_request_id_keeps_every_record(serve, settings_factory, tmp_path):
    """Callers choose x-request-id; two requests with the same one are still two records."""
    up = serve(FakeOpenAI())
    url = f"sqlite:///{tmp_path / 'reuse.db'}"
    srv = serve(create_app(settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}],
                                            database_url=url)))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0,
                           default_headers={"x-request-id": "same-id"})
    for _ in range(3):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    wait_for_records(srv, 3)
    rows = read_records(url)
    assert [r.request_id for r in rows] == ["same-id"] * 3
    assert len({r.id for r in rows}) == 3
