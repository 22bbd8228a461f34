"""Replicas of one public model, the least-outstanding-requests choice between them, and their breakers.

Request failures (passive checks) open a replica's breaker, but never the deployment's last routable replica:
a single upstream 5xx would otherwise refuse every request with 503 for the cooldown. Only failed health checks
(active, ``health.HealthChecker``) take the last one out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from lmops.config import HealthConfig, ModelConfig
from lmops.engines.base import Engine
from lmops.routing.breaker import Breaker

log = logging.getLogger("lmops.health")


@dataclass(eq=False)
class Replica:
    engine: Engine
    outstanding: int = 0
    breaker: Breaker = field(default_factory=Breaker)

    @property
    def endpoint(self) -> str:
        return self.engine.endpoint

    @property
    def healthy(self) -> bool:
        """In the pool: its breaker is closed."""
        return self.breaker.closed


@dataclass(eq=False)
class Deployment:
    """A public model name and the replicas that serve it."""

    config: ModelConfig
    replicas: list[Replica] = field(default_factory=list)
    _turn: int = field(default=0, init=False, repr=False)  # where the next pick starts: ties go round

    @property
    def name(self) -> str:
        return self.config.name

    def pick(self, exclude: set[int]) -> Replica | None:
        """Skipping ``exclude`` (ids): an open replica whose cooldown is over, as its one half-open probe; else
        the healthy replica with the fewest requests in flight, ties taken in turn (not always the first)."""
        replicas = self.replicas
        n = len(replicas)
        if n == 1 and replicas[0].breaker.closed:  # the common case, kept short
            return None if id(replicas[0]) in exclude else replicas[0]
        start = self._turn
        self._turn = start + 1 if start + 1 < n else 0
        best: Replica | None = None
        least = 1 << 62
        for i in range(start - n, start):  # from replicas[start] round to replicas[start - 1]
            r = replicas[i]
            if r.breaker.closed:
                if r.outstanding < least and id(r) not in exclude:
                    best, least = r, r.outstanding
            elif id(r) not in exclude and r.breaker.try_probe(time.monotonic()):
                return r
        return best

    def succeeded(self, replica: Replica) -> None:
        if replica.breaker.succeeded():
            log.info("replica back in the pool", extra={"model": self.name, "replica": replica.endpoint})

    def failed(self, replica: Replica, health: HealthConfig, probe: bool) -> None:
        """A request to ``replica`` failed (``probe``: it was the half-open probe)."""
        breaker, now = replica.breaker, time.monotonic()
        if probe:
            breaker.open(now, health.cooldown)
            log.warning("replica still failing: breaker open again",
                        extra={"model": self.name, "replica": replica.endpoint})
            return
        if not breaker.failed(now, health.failure_threshold, health.failure_window):
            return
        if any(r.breaker.closed for r in self.replicas if r is not replica):
            breaker.open(now, health.cooldown)
            log.warning("replica ejected: breaker open", extra={"model": self.name, "replica": replica.endpoint})
        elif breaker.hold():
            log.warning("replica failing but kept in the pool: the model's last healthy replica",
                        extra={"model": self.name, "replica": replica.endpoint})

    def checked(self, replica: Replica, ok: bool, health: HealthConfig, probe: bool) -> None:
        """A health check of ``replica`` ended, ``ok`` or not (``probe``: the check took the half-open probe).
        Unlike request failures, failed checks take out the last replica too."""
        breaker = replica.breaker
        if probe and not breaker.closed:
            if ok:
                self.succeeded(replica)
            else:
                breaker.open(time.monotonic(), health.cooldown)
        elif breaker.closed:
            if ok:
                breaker.check_passed()
            elif breaker.check_failed(health.failure_threshold):
                breaker.open(time.monotonic(), health.cooldown)
                log.warning("replica ejected by health check",
                            extra={"model": self.name, "replica": replica.endpoint})

    def is_ready(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def max_attempts(self) -> int:
        retries = self.config.max_retries
        if retries is None:
            retries = len(self.replicas) - 1
        return 1 + max(0, retries)
