"""Failed sign-ins per key (the sign-in uses the client's key and the user name): beyond ``limit`` within
``window`` seconds, sign-ins for that key are refused (429) until the oldest failure leaves the window. Kept in
this process (several gateway processes each count their own)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from lmops.protocol.errors import RateLimited

MAX_KEYS = 100_000  # beyond this many keys tracked, the oldest are forgotten


class SignInThrottle:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def check(self, key: str) -> None:
        """Refuse a sign-in for a key with too many recent failures."""
        failures = self._recent(key)
        if failures is not None and len(failures) >= self.limit:
            wait = max(1, math.ceil(failures[0] + self.window - self.clock()))
            raise RateLimited(f"Too many failed sign-ins: try again in {wait} seconds.", code="too_many_sign_ins",
                              headers={"Retry-After": str(wait)})

    def failed(self, key: str) -> None:
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
