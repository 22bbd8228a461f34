"""Insert batches of rows into a SQLite file: statements made on the event loop, run in a thread.

The Python work (a few microseconds a row) is done on the loop, a chunk per step: a thread that needs
the GIL while the loop is busy is woken at every one of the loop's GIL releases, which costs more than
the work. SQLite's own work then runs in a thread without the GIL, all of a batch's statements in one
transaction: a transaction costs dozens of page writes whatever its size, so batches stay large, and the
loop never waits for the disk or for another connection's write lock.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import URL

from lmops.store.sqlite import BUSY_TIMEOUT_S, configure_sqlite

SQLITE_MAX_VARIABLES = 32766  # SQLite >= 3.32 (Python 3.11 ships 3.40+)
ROWS_PER_STATEMENT = 100  # a statement's text and plan grow with its rows; made in one loop step

Statement = tuple[str, list[Any]]

# How SQLAlchemy stores these types in SQLite (so rows read back through SQLAlchemy are unchanged).
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "DateTime": lambda v: v.replace(tzinfo=None).isoformat(" ", "microseconds"),  # = "%Y-%m-%d %H:%M:%S.%f"
    "Date": lambda v: v.isoformat(),
    "Boolean": int,
}


class SQLiteRows:
    """One table's inserts on one raw sqlite3 connection (no pool: less Python in the thread)."""

    def __init__(self, url: URL, table: Table):
        self.table = table
        self._conn = sqlite3.connect(url.database or "", timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                     check_same_thread=False)  # made on the loop, used in a thread
        configure_sqlite(self._conn)

    def rows_per_statement(self, columns: int) -> int:
        return max(1, min(ROWS_PER_STATEMENT, SQLITE_MAX_VARIABLES // columns))

    def statement(self, rows: Sequence[dict[str, Any]]) -> Statement:
        """One multi-row INSERT and its parameters (one statement: ``executemany`` costs a call per row)."""
        columns = list(rows[0])
        values_of = values_getter(columns)
        convert = [(i, f) for i, c in enumerate(columns)
                   if (f := _CONVERTERS.get(type(self.table.c[c].type).__name__)) is not None]
        values: list[Any] = []
        for row in rows:
            row_values = list(values_of(row))
            for i, f in convert:
                if row_values[i] is not None:
                    row_values[i] = f(row_values[i])
            values += row_values
        names = ", ".join(f'"{c}"' for c in columns)
        one = f'({", ".join("?" for _ in columns)})'
        return f'INSERT INTO "{self.table.name}" ({names}) VALUES {", ".join([one] * len(rows))}', values

    def insert(self, statements: Sequence[Statement]) -> None:
        """Run the statements in one transaction, waiting for the write lock (in a thread)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                self._conn.execute(*statement)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()


def values_getter(columns: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A row's values in ``columns`` order, always as a tuple."""
    if len(columns) == 1:
        column = columns[0]
        return lambda row: (row[column],)
    return operator.itemgetter(*columns)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)
