"""A circuit breaker for one replica: closed → open (cooldown) → half-open (one probe) → closed or open again.

It knows nothing of the replica's siblings: whether it may open (never the last routable replica on request
failures alone) is the deployment's call (``replicas.Deployment``). Times are ``time.monotonic()`` seconds,
passed in so that the state machine stays plain.
"""

from __future__ import annotations

from collections import deque


class Breaker:
    __slots__ = ("closed", "retry_at", "probing", "check_failures", "held", "holding", "_failures")

    def __init__(self) -> None:
        self.closed = True  # routable; False: open, and half-open while ``probing``
        self.retry_at = 0.0  # when open: from then on one probe may go through (half-open)
        self.probing = False  # half-open: the one probe (a request or a health check) is in flight
        self.check_failures = 0  # consecutive failed health checks
        self.held = 0  # times it would have opened on request failures but stayed closed (the last replica)
        self.holding = False  # held closed since the last success
        self._failures: deque[float] = deque()  # times of the consecutive request failures, oldest first

    def succeeded(self) -> bool:
        """The replica answered (a request, or the half-open health check): forget failures, close.
        True if it was open."""
        if self.closed and not self._failures and not self.check_failures:
            return False  # the hot path: nothing to forget
        self._failures.clear()
        self.check_failures = 0
        self.probing = self.holding = False
        was_open, self.closed = not self.closed, True
        return was_open

    def failed(self, now: float, threshold: int, window: float) -> bool:
        """A request failed. True when the last ``threshold`` failures in a row all fall within ``window``
        seconds of this one: the breaker should open. Failures older than the window do not add up."""
        failures = self._failures
        failures.append(now)
        while len(failures) > threshold or now - failures[0] > window:
            failures.popleft()
        return self.closed and len(failures) >= threshold

    def hold(self) -> bool:
        """It should open but stays closed (the deployment's last routable replica). True the first time since
        the last success."""
        self.held += 1
        first, self.holding = not self.holding, True
        return first

    def check_passed(self) -> None:
        self.check_failures = 0

    def check_failed(self, threshold: int) -> bool:
        """A health check failed. True when ``threshold`` checks in a row have: the breaker should open."""
        self.check_failures += 1
        return self.closed and self.check_failures >= threshold

    def open(self, now: float, cooldown: float) -> None:
        self.closed = False
        self.probing = self.holding = False
        self.retry_at = now + cooldown
        self._failures.clear()

    def try_probe(self, now: float) -> bool:
        """Open, cooled down and no probe in flight: take the one half-open probe. The caller settles it with
        ``succeeded``, ``open`` or ``release``."""
        if self.closed or self.probing or now < self.retry_at:
            return False
        self.probing = True
        return True

    def release(self) -> None:
        """The probe ended without a verdict (cancelled, or an answer that says nothing of the replica's health):
        the next request or health check may probe."""
        self.probing = False
