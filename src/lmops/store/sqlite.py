"""The one SQLite connection setup, for every connection lmops opens on a SQLite file (the app's engine, the
batch queue's engine and the request-record writer's raw connection)."""

from __future__ import annotations

from typing import Any

# How long a writer waits for another connection's write lock before "database is locked": every connection
# is opened with ``timeout=BUSY_TIMEOUT_S`` (sqlite3's busy timeout; aiosqlite passes it on).
BUSY_TIMEOUT_S = 30.0

PRAGMAS = (
    "journal_mode=WAL",  # readers never block the writer, nor the writer them
    "synchronous=NORMAL",  # in WAL mode: durable at each checkpoint; a power loss may lose the last commits
    "foreign_keys=ON",
)


def configure_sqlite(dbapi_conn: Any, _record: Any = None) -> None:
    """Apply ``PRAGMAS`` to a new DB-API connection (sqlite3, or SQLAlchemy's aiosqlite adapter).

    Usable as a SQLAlchemy ``connect`` event listener, hence the unused connection-record argument.
    """
    cur = dbapi_conn.cursor()
    for pragma in PRAGMAS:
        cur.execute(f"PRAGMA {pragma}")
    cur.close()
