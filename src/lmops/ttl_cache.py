"""Lookups cached for a few seconds: no database round trip per request (API key values, chat sessions).

A change (a revoked key, a changed limit, a session ended) takes effect everywhere within ``ttl`` seconds (at
once in the process that made it, which invalidates its entry). Concurrent misses for one key share a single
load. A miss (None) is cached too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    def __init__(self, load: Callable[[str], Awaitable[V | None]], ttl: float, *, max_entries: int = 100_000,
                 clock: Any = time.monotonic):
        self._load = load
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, V | None]] = {}
        self._loading: dict[str, asyncio.Future[V | None]] = {}

    async def get(self, key: str) -> V | None:
        hit = self._entries.get(key)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await self._load(key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._loading[key]
        self._store(key, value)
        future.set_result(value)
        return value

    def fresh(self, key: str) -> V | None:
        """The cached value while it is fresh, without awaiting; None when ``get`` would have to load it."""
        hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] > self._clock() else None

    def invalidate(self, key: str | None = None) -> None:
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)

    def _store(self, key: str, value: V | None) -> None:
        now = self._clock()
        if len(self._entries) >= self._max:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= self._max:
                self._entries.clear()
        self._entries[key] = (now + self._ttl, value)
