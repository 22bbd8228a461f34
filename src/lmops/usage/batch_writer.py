"""Write rows to a table in batches, off the request path.

``add`` only appends to an in-memory list; a background task inserts whatever has
accumulated every ``flush_interval`` seconds (or sooner once ``batch_size`` rows wait).
A database outage never blocks or fails a request: rows wait, are retried, and beyond
``max_pending`` the oldest are dropped and counted. On SQLite the insert runs in a thread with
the standard sqlite3 driver: statement building for hundreds of rows would otherwise hold the
event loop for milliseconds, which shows in the gateway's tail latency.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import sqlite3
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy import Engine, Table, event, insert
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("lmops.usage")

# Rows the database refuses for good (as opposed to an outage, which is retried).
_REFUSED = (IntegrityError, DataError, sqlite3.IntegrityError, sqlite3.DataError,
            asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)

_SQLITE_MAX_VARIABLES = 32766  # SQLite >= 3.32 (Python 3.11 ships 3.40+)
_SQLITE_ROWS_PER_STATEMENT = 100  # a statement's text and plan grow with its rows; made in one loop step

# How SQLAlchemy stores these types in SQLite (so rows read back through SQLAlchemy are unchanged).
_SQLITE_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "DateTime": lambda v: v.replace(tzinfo=None).isoformat(" ", "microseconds"),  # = "%Y-%m-%d %H:%M:%S.%f"
    "Date": lambda v: v.isoformat(),
    "Boolean": int,
}


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
        self._sync: Engine | None = None  # SQLite: inserts run in a thread
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            from lmops.store.database import _sqlite_pragmas

            self._sync = create_sync_engine(engine.url.set(drivername="sqlite"),
                                            connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self._sync, "connect", _sqlite_pragmas)
        self.written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
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
        await self.flush()
        if self._sync is not None:
            self._sync.dispose()

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        if self._sync is not None:
            per_statement = max(1, min(_SQLITE_ROWS_PER_STATEMENT, _SQLITE_MAX_VARIABLES // len(rows[0])))
            statements = []
            for start in range(0, len(rows), per_statement):
                if start:
                    await asyncio.sleep(0)  # let requests run between chunks: this is the gateway's p99
                statements.append(self._sqlite_statement(rows[start:start + per_statement]))
            await asyncio.to_thread(self._execute_sync, statements)
            return
        if self._engine.dialect.driver == "asyncpg":
            await self._copy_asyncpg(rows)
            return
        async with self._engine.begin() as conn:
            await conn.execute(insert(self._table), rows)

    async def _copy_asyncpg(self, rows: list[dict[str, Any]]) -> None:
        """PostgreSQL: one binary COPY on the raw asyncpg connection.

        SQLAlchemy's multi-row INSERT processes every parameter in Python on the event loop (over
        10 ms for 500 records); asyncpg encodes COPY rows in C. Rows hold plain values (str, int,
        float, bool, datetime, date, None), which is what the record and ledger tables take.
        """
        columns = list(rows[0])
        values_of = _values_getter(columns)
        records = [values_of(r) for r in rows]
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                self._table.name, records=records, columns=columns)

    def _sqlite_statement(self, rows: list[dict[str, Any]]) -> tuple[str, list[Any]]:
        """One multi-row INSERT with its parameters, made on the event loop.

        The Python work is done here rather than in the writer thread: a thread that needs the GIL
        while the event loop is busy is woken at every one of the loop's GIL releases, which cost
        several times the insert itself. SQLite's own work then runs in the thread without the GIL,
        one statement per chunk of rows (``executemany`` would hand the GIL over once per row).
        """
        columns = list(rows[0])
        values_of = _values_getter(columns)
        convert = [(i, f) for i, c in enumerate(columns)
                   if (f := _SQLITE_CONVERTERS.get(type(self._table.c[c].type).__name__)) is not None]
        values: list[Any] = []
        for row in rows:
            row_values = list(values_of(row))
            for i, f in convert:
                if row_values[i] is not None:
                    row_values[i] = f(row_values[i])
            values += row_values
        names = ", ".join(f'"{c}"' for c in columns)
        one = f'({", ".join("?" for _ in columns)})'
        return f'INSERT INTO "{self._table.name}" ({names}) VALUES {", ".join([one] * len(rows))}', values

    def _execute_sync(self, statements: list[tuple[str, list[Any]]]) -> None:
        """Run the statements in one transaction on the raw sqlite3 connection (SQLAlchemy's per-row
        processing cost more CPU than the rest of a gateway request)."""
        assert self._sync is not None
        raw = self._sync.raw_connection()
        try:
            try:
                cursor = raw.cursor()
                for sql, values in statements:
                    cursor.execute(sql, values)
                raw.commit()
            except Exception:
                raw.rollback()
                raise
        finally:
            raw.close()

    async def flush(self) -> None:
        """Write everything pending now (waits for a flush already running)."""
        async with self._flush_lock:
            while self._pending:
                batch = self._pending[: self._batch_size * 4]
                try:
                    await self._insert(batch)
                except _REFUSED:
                    # A row the database will never accept must not block the rows behind it forever.
                    await self._write_one_by_one(batch)
                except Exception:
                    log.exception("could not write %d %s rows; will retry", len(batch), self._table.name)
                    raise
                else:
                    self.written += len(batch)
                del self._pending[: len(batch)]

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
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - keep rows and retry on the next tick
                await asyncio.sleep(self._interval)


def _values_getter(columns: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A row's values in ``columns`` order, always as a tuple."""
    if len(columns) == 1:
        column = columns[0]
        return lambda row: (row[column],)
    return operator.itemgetter(*columns)
