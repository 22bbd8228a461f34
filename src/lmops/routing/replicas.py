"""Replicas of one public model and the least-outstanding-requests choice between them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lmops.config import ModelConfig
from lmops.engines.base import Engine


@dataclass(eq=False)
class Replica:
    engine: Engine
    outstanding: int = 0
    healthy: bool = True
    consecutive_failures: int = 0
    ejected_at: float | None = None

    @property
    def endpoint(self) -> str:
        return self.engine.endpoint

    def record_success(self) -> None:
        self.consecutive_failures = 0
        if not self.healthy:
            self.healthy = True
            self.ejected_at = None

    def record_failure(self, threshold: int) -> None:
        self.consecutive_failures += 1
        if self.healthy and self.consecutive_failures >= threshold:
            self.healthy = False
            self.ejected_at = time.monotonic()


@dataclass(eq=False)
class Deployment:
    """A public model name and the replicas that serve it."""

    config: ModelConfig
    replicas: list[Replica] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.name

    def pick(self, exclude: set[int]) -> Replica | None:
        """The healthy replica with the fewest requests in flight, skipping ``exclude`` (ids)."""
        best: Replica | None = None
        for r in self.replicas:
            if not r.healthy or id(r) in exclude:
                continue
            if best is None or r.outstanding < best.outstanding:
                best = r
        return best

    def is_ready(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def max_attempts(self) -> int:
        retries = self.config.max_retries
        if retries is None:
            retries = len(self.replicas) - 1
        return 1 + max(0, retries)
