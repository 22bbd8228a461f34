"""Key grants cached by prefix for a few seconds: no database round trip per request.

A revoked key or a changed limit takes effect everywhere within ``ttl`` seconds (at once on
the replica that made the change, which invalidates its entry). Concurrent misses for one
prefix share a single load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lmops.access.store import KeyGrant

Loader = Callable[[str], Awaitable[KeyGrant | None]]


class KeyCache:
    def __init__(self, load: Loader, ttl: float, *, max_entries: int = 100_000, clock: Any = time.monotonic):
        self._load = load
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, KeyGrant | None]] = {}
        self._loading: dict[str, asyncio.Future[KeyGrant | None]] = {}

    async def get(self, prefix: str) -> KeyGrant | None:
        hit = self._entries.get(prefix)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        pending = self._loading.get(prefix)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyGrant | None] = asyncio.get_running_loop().create_future()
        self._loading[prefix] = future
        try:
            grant = await self._load(prefix)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._loading[prefix]
        self._store(prefix, grant)
        future.set_result(grant)
        return grant

    def fresh(self, prefix: str) -> KeyGrant | None:
        """The cached grant while it is fresh, without awaiting; None when ``get`` would have to load it."""
        hit = self._entries.get(prefix)
        return hit[1] if hit is not None and hit[0] > self._clock() else None

    def invalidate(self, prefix: str | None = None) -> None:
        if prefix is None:
            self._entries.clear()
        else:
            self._entries.pop(prefix, None)

    def _store(self, prefix: str, grant: KeyGrant | None) -> None:
        now = self._clock()
        if len(self._entries) >= self._max:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= self._max:
                self._entries.clear()
        self._entries[prefix] = (now + self._ttl, grant)
