"""Identifiers: one scheme for every id lmops makes (records, requests, teams, keys, files, jobs, responses).

``new_id(prefix)`` is the prefix and 32 hex characters: 12 of milliseconds since the epoch, then 20 random.
A random id (uuid4) puts every new row on a random page of its table's indexes: once a table outgrows the
cache, each insert dirties pages all over the index, and SQLite's write-ahead log grows by a page per row (a
6x slower insert at 300k request records). These ids start with the time, so new rows land at the end of
the index, and end with 80 random bits, so they stay as unique as a UUID across processes. They name
things, they are not secrets (API keys and the server secret come from ``secrets``): the random part comes
from the ``random`` module, as ``os.urandom`` (a system call) costs ten times more, and far more under some
sandboxes.
"""

from __future__ import annotations

import random
import time


def new_id(prefix: str = "") -> str:
    """``prefix`` followed by 32 hex characters, ordered by creation time (to the millisecond)."""
    return f"{prefix}{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"
