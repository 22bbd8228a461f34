"""Database helpers for the batch tables: dialect-portable upserts and the SQLite claim engine."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lmops.store.sqlite import BUSY_TIMEOUT_S, configure_sqlite

T = TypeVar("T")


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def insert_ignore(engine: AsyncEngine, table: Table, *index: str) -> Any:
    """INSERT ... ON CONFLICT (index) DO NOTHING, for PostgreSQL and SQLite."""
    dialect = postgresql if is_postgres(engine) else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=list(index) or None)


def upsert(engine: AsyncEngine, table: Table, index: tuple[str, ...], update: tuple[str, ...]) -> Any:
    """INSERT ... ON CONFLICT (index) DO UPDATE SET the ``update`` columns, for PostgreSQL and SQLite."""
    stmt = (postgresql if is_postgres(engine) else sqlite).insert(table)
    return stmt.on_conflict_do_update(index_elements=list(index),
                                      set_={c: getattr(stmt.excluded, c) for c in update})


def queue_engine(db: AsyncEngine) -> AsyncEngine:
    """The engine queue transactions use: on PostgreSQL a pool of its own; on SQLite one whose every
    transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock first, so claims from several
    processes are serialized instead of failing on a stale snapshot)."""
    if is_postgres(db):
        # Its own small pool without pre-ping: the queue's hot path saves a round trip per transaction.
        return create_async_engine(db.url, pool_size=4, max_overflow=4, pool_recycle=300)
    engine = create_async_engine(db.url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver must not BEGIN on its own: _begin does
        configure_sqlite(dbapi_conn)

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def retry_conflicts(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Retry a transaction that lost a deadlock / serialization race or hit a locked SQLite database."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        for attempt in range(5):
            try:
                return await fn(*args, **kwargs)
            except (OperationalError, DBAPIError) as exc:
                text = str(exc).lower()
                transient = any(s in text for s in ("deadlock", "could not serialize", "database is locked"))
                if not transient or attempt == 4:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    return wrapper
