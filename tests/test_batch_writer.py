"""The batched row writer on SQLite (multi-row INSERTs in a thread) and PostgreSQL (binary COPY)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from lmops.observability.metrics import Metrics
from lmops.store.database import create_engine, upgrade_async
from lmops.usage import sqlite_rows
from lmops.usage.batch_writer import BatchWriter
from lmops.usage.records import RequestRecord


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'writer.db'}"
    return request.getfixturevalue("pg_url")


def record(i: int, **changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": f"{i:032x}", "request_id": f"req_{i}", "created_at": datetime(2026, 11, 21, tzinfo=timezone.utc)
        + timedelta(microseconds=i), "endpoint": "chat.completions", "model": "m", "replica": None,
        "stream": i % 2 == 0, "prompt_tokens": i, "completion_tokens": 2 * i, "latency_ms": 1.5, "ttft_ms": None,
        "status": 200, "error": None,
    }
    row.update(changes)
    return row


async def test_rows_are_written_exactly_and_a_refused_row_is_dropped_alone(database_url):
    await upgrade_async(database_url)
    engine = create_engine(database_url)
    writer = BatchWriter(engine, RequestRecord.__table__, batch_size=50)  # type: ignore[arg-type]
    try:
        for i in range(1, 731):  # several statements (SQLite) and batches
            writer.add(record(i))
        writer.add(record(5, request_id="duplicate"))  # same primary key as row 5: refused for good
        writer.add(record(10_000, error="after the refused one"))
        await writer.flush()
        async with engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(RequestRecord.__table__))
            rows = {r.id: r for r in (await conn.execute(select(RequestRecord.__table__))).all()}
    finally:
        await writer.stop()
        await engine.dispose()
    assert (writer.written, writer.dropped, count) == (731, 1, 731)
    five = rows[f"{5:032x}"]
    assert (five.request_id, five.prompt_tokens, five.completion_tokens, five.stream) == ("req_5", 5, 10, False)
    created = five.created_at if five.created_at.tzinfo else five.created_at.replace(tzinfo=timezone.utc)
    assert created == datetime(2026, 11, 21, tzinfo=timezone.utc) + timedelta(microseconds=5)
    assert rows[f"{10_000:032x}"].error == "after the refused one"


async def test_billed_records_keep_dates_and_nulls(database_url):
    """Billing columns (the ledger) ride in the request record: a date, a cost, and NULLs for an unbilled row."""
    await upgrade_async(database_url)
    engine = create_engine(database_url)
    writer = BatchWriter(engine, RequestRecord.__table__)  # type: ignore[arg-type]
    now = datetime.now(timezone.utc)
    try:
        for i in range(3):
            billed = i > 0
            writer.add({"id": f"{i:032x}", "request_id": f"r{i}", "created_at": now, "endpoint": "chat.completions",
                        "model": "m", "adapter": "a" if billed else None, "replica": None, "stream": True,
                        "prompt_tokens": 1, "completion_tokens": i, "latency_ms": 2.0, "ttft_ms": None,
                        "status": 200, "error": None, "team_id": "t" if billed else None, "user_id": None,
                        "key_id": "k" if billed else None, "cost_usd": 0.25 * i if billed else None,
                        "day": now.date() if billed else None})
        await writer.flush()
        async with engine.connect() as conn:
            rows = (await conn.execute(select(RequestRecord.__table__).order_by("request_id"))).all()
    finally:
        await writer.stop()
        await engine.dispose()
    assert [(r.request_id, r.completion_tokens, r.team_id, r.adapter, r.cost_usd, r.day) for r in rows] == [
        ("r0", 0, None, None, None, None)] + [(f"r{i}", i, "t", "a", 0.25 * i, now.date()) for i in (1, 2)]


async def test_sqlite_rows_wait_for_another_writer_without_holding_the_loop(tmp_path, monkeypatch):
    """A write lock held by another connection is waited for in the writer's thread: the loop keeps
    serving, the rows stay pending, and they land once the lock is released."""
    monkeypatch.setattr(sqlite_rows, "BUSY_TIMEOUT_S", 3.0)  # a wait on the loop would stall it 3 s, then fail
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    await upgrade_async(url)
    engine = create_engine(url)
    writer = BatchWriter(engine, RequestRecord.__table__)  # type: ignore[arg-type]
    other = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another connection is writing
        for i in range(1, 101):
            writer.add(record(i))
        flush = asyncio.create_task(writer.flush())
        steps = []
        for _ in range(20):  # the loop is free while the flush waits: each 10 ms sleep ends on time
            started = time.monotonic()
            await asyncio.sleep(0.01)
            steps.append(time.monotonic() - started)
        assert max(steps) < 1.0, steps
        assert not flush.done() and writer.pending == 100
        other.execute("COMMIT")
        await asyncio.wait_for(flush, 10)
        count = other.execute("SELECT count(*) FROM request_records").fetchone()[0]
    finally:
        other.close()
        await writer.stop()
        await engine.dispose()
    assert (count, writer.written, writer.pending) == (100, 100, 0)


async def test_a_row_waits_at_most_one_flush_interval_and_the_gauge_counts_what_waits(tmp_path):
    """What a kill -9 would lose is ``pending``; rows arriving steadily never pile up beyond one ``flush_interval``
    of them (plus the write in progress), and ``lmops_usage_unflushed_rows`` reports ``pending`` as it is."""
    url = f"sqlite:///{tmp_path / 'cadence.db'}"
    await upgrade_async(url)
    engine = create_engine(url)
    interval, every = 0.1, 0.005
    writer = BatchWriter(engine, RequestRecord.__table__, flush_interval=interval,  # type: ignore[arg-type]
                         batch_size=100_000)  # only the interval starts a write here
    metrics = Metrics()
    metrics.watch_unflushed_rows(lambda: writer.pending)

    def gauge() -> float:
        line = next(x for x in metrics.render().decode().splitlines() if x.startswith("lmops_usage_unflushed_rows "))
        return float(line.split()[1])

    writer.start()
    most, started, added, seen = 0, time.monotonic(), 0, set()
    try:
        while time.monotonic() - started < 1.2:  # about 12 intervals
            added += 1
            writer.add(record(added))
            most = max(most, writer.pending)
            seen.add(gauge() == writer.pending)
            await asyncio.sleep(every)
        before = writer.pending  # a flush may finish while we count: rows only move from pending to the table
        async with engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(RequestRecord.__table__))
        assert added - before <= count <= added  # nothing lost or doubled while running
        await writer.stop()
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(RequestRecord.__table__)) == added
    finally:
        await writer.stop()
        await engine.dispose()
    per_interval = interval / every  # rows arriving in one interval, at most (sleeps only run late)
    assert 0 < most <= per_interval * 1.5 + 5, (most, added)
    assert seen == {True}
