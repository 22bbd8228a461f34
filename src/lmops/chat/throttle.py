"""Failed sign-ins per key (the sign-in uses the client's address and the user name): beyond ``limit`` within
``window`` seconds, sign-ins for that key are refused (429) until the oldest failure leaves the window.

``SignInThrottle`` counts in this process; ``RedisSignInThrottle`` (when ``redis_url`` is set) in Redis, shared by
every gateway process, so that N processes do not give N times the attempts. Should Redis fail, it counts in this
process meanwhile: a sign-in never fails because Redis is down.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from lmops.protocol.errors import RateLimited

log = logging.getLogger("lmops.chat")

MAX_KEYS = 100_000  # beyond this many keys tracked, the oldest are forgotten


class Throttle(Protocol):
    async def check(self, key: str) -> None:
        """Refuse (429) a sign-in for a key with too many recent failures."""
        ...

    async def failed(self, key: str) -> None:
        """Count a failed sign-in of a key."""
        ...


def _refuse(wait: float) -> RateLimited:
    seconds = max(1, math.ceil(wait))
    return RateLimited(f"Too many failed sign-ins: try again in {seconds} seconds.", code="too_many_sign_ins",
                       headers={"Retry-After": str(seconds)})


class SignInThrottle:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    async def check(self, key: str) -> None:
        failures = self._recent(key)
        if failures is not None and len(failures) >= self.limit:
            raise _refuse(failures[0] + self.window - self.clock())

    async def failed(self, key: str) -> None:
        failures = self._recent(key)
        if failures is None:
            if len(self._failures) >= MAX_KEYS:
                self._failures.pop(next(iter(self._failures)))
            failures = self._failures[key] = deque()
        failures.append(self.clock())

    def _recent(self, key: str) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures


class RedisSignInThrottle:
    """The same sliding window in Redis: one sorted set of failure times per key (hashed), living one window."""

    def __init__(self, url: str, prefix: str, limit: int, window: float, clock: Callable[[], float] = time.time):
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix
        self.limit = limit
        self.window = window
        self.clock = clock
        self.local = SignInThrottle(limit, window)  # while Redis fails

    def _key(self, key: str) -> str:
        return f"{self._prefix}:sign-in:{hashlib.sha256(key.encode()).hexdigest()}"

    async def check(self, key: str) -> None:
        now = self.clock()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(self._key(key), "-inf", now - self.window)
                pipe.zrange(self._key(key), 0, 0, withscores=True)
                pipe.zcard(self._key(key))
                _, oldest, count = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis down: count in this process meanwhile
            log.warning("sign-in throttle: Redis failed (%s); counting in this process", exc)
            return await self.local.check(key)
        if count >= self.limit and oldest:
            raise _refuse(oldest[0][1] + self.window - now)

    async def failed(self, key: str) -> None:
        now = self.clock()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self._key(key), {f"{now!r}:{secrets.token_hex(4)}": now})
                pipe.expire(self._key(key), math.ceil(self.window) + 1)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            log.warning("sign-in throttle: Redis failed (%s); counting in this process", exc)
            await self.local.failed(key)

    async def close(self) -> None:
        await self._redis.aclose()
