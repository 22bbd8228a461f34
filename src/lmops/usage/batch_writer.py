"""Write rows to a table in batches, off the request path.

``add`` only appends to an in-memory list; a background task inserts whatever has
accumulated every ``flush_interval`` seconds (or sooner once ``batch_size`` rows wait).
A database outage never blocks or fails a request: rows wait, are retried, and beyond
``max_pending`` the oldest are dropped and counted. SQLite files are written in a thread
(``sqlite_rows``); PostgreSQL through one binary COPY per batch.

What a ``kill -9`` loses is ``pending``: the rows added and not yet committed, the batch being
written included (a row leaves the list only once its transaction has committed). Flushes start
``flush_interval`` seconds apart, counted from the start of the previous one, and each writes every
row pending when it starts; so a row waits at most ``max(flush_interval, w1) + w2`` seconds, w1 and
w2 being the durations of the write it just missed and of its own (milliseconds on a healthy
database). While the database fails, rows wait, up to ``max_pending``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy import Table, insert
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.usage.sqlite_rows import SQLiteRows, values_getter

log = logging.getLogger("lmops.usage")

# Rows the database refuses for good (as opposed to an outage, which is retried).
_REFUSED = (IntegrityError, DataError, sqlite3.IntegrityError, sqlite3.DataError,
            asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)

class BatchWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        *,
        flush_interval: float = 0.5,
        batch_size: int = 500,
        max_pending: int = 100_000,
        on_drop: Callable[[int], None] | None = None,
    ):
        self._engine = engine
        self._table = table
        self._interval = flush_interval
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._on_drop = on_drop
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        self._sqlite: SQLiteRows | None = None  # a SQLite file: written in a thread
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            self._sqlite = SQLiteRows(engine.url, table)
        self.written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Rows not committed yet, the batch being written included: what a ``kill -9`` would lose now."""
        return len(self._pending)

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        overflow = len(self._pending) - self._max_pending
        if overflow > 0:
            del self._pending[:overflow]
            self.dropped += overflow
            if self._on_drop:
                self._on_drop(overflow)
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"lmops-writer-{self._table.name}")

    async def stop(self) -> None:
        """Stop the background task (by flag, not cancellation) and write what is left."""
        if self._task:
            self._stopping = True
            self._wake.set()
            try:
                await self._task
            except Exception:  # noqa: BLE001 - the final flush below reports its own failure
                pass
            self._task = None
        try:
            await self.flush()
        finally:
            if self._sqlite is not None:
                self._sqlite.close()

    async def flush(self) -> None:
        """Write everything pending now (waits for a flush already running).

        Rows leave the pending list as soon as the database has them, batch by batch: a failure keeps
        the rest for the next attempt, and a row the database refuses for good is dropped alone.
        """
        async with self._flush_lock:
            left = len(self._pending)  # not the rows added meanwhile: chasing them would write a few at a time
            while left > 0 and self._pending:
                chunk = self._pending[:min(self._batch_size * 4, left)]
                left -= len(chunk)
                try:
                    await self._insert(chunk)
                except _REFUSED:
                    await self._write_one_by_one(chunk)
                except Exception:
                    log.exception("could not write %d %s rows; will retry", len(chunk), self._table.name)
                    raise
                else:
                    self.written += len(chunk)
                del self._pending[: len(chunk)]

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        if self._sqlite is not None:
            per_statement = self._sqlite.rows_per_statement(len(rows[0]))
            statements = []
            for start in range(0, len(rows), per_statement):
                if start:
                    await asyncio.sleep(0)  # let requests run between chunks: this is the gateway's p99
                statements.append(self._sqlite.statement(rows[start:start + per_statement]))
            await asyncio.to_thread(self._sqlite.insert, statements)
        elif self._engine.dialect.driver == "asyncpg":
            await self._copy_asyncpg(rows)
        else:
            async with self._engine.begin() as conn:
                await conn.execute(insert(self._table), rows)

    async def _copy_asyncpg(self, rows: list[dict[str, Any]]) -> None:
        """PostgreSQL: one binary COPY on the raw asyncpg connection.

        SQLAlchemy's multi-row INSERT processes every parameter in Python on the event loop (over
        10 ms for 500 records); asyncpg encodes COPY rows in C. Rows hold plain values (str, int,
        float, bool, datetime, date, None), which is what the request records (the ledger too) take.
        """
        columns = list(rows[0])
        values_of = values_getter(columns)
        records = [values_of(r) for r in rows]
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                self._table.name, records=records, columns=columns)

    async def _write_one_by_one(self, batch: list[dict[str, Any]]) -> None:
        for row in batch:
            try:
                await self._insert([row])
            except _REFUSED:
                log.error("dropped a %s row the database refused", self._table.name)
                self.dropped += 1
                if self._on_drop:
                    self._on_drop(1)
            else:
                self.written += 1

    async def _loop(self) -> None:
        clock = asyncio.get_running_loop().time
        due = clock() + self._interval
        while not self._stopping:
            wait = due - clock()
            if wait > 0 and not self._wake.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            if self._stopping:
                return
            due = clock() + self._interval  # from this start, not the end: a slow write does not add to the wait
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - keep rows and retry on the next tick
                await asyncio.sleep(self._interval)
