"""Active health checks: probe every replica periodically; a replica out of the pool returns when a check
after its cooldown passes, and only failed checks take out a model's last replica (``replicas.Deployment``)."""

from __future__ import annotations

import asyncio
import logging
import time

from lmops.config import HealthConfig
from lmops.routing.replicas import Replica
from lmops.routing.router import Router

log = logging.getLogger("lmops.health")


class HealthChecker:
    def __init__(self, router: Router, config: HealthConfig):
        self._router = router
        self._config = config
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="lmops-health")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def check_once(self) -> None:
        """Probe every replica in the pool, and each open one whose cooldown is over (its half-open probe;
        skipped while a request is that probe, or while it cools down)."""
        now = time.monotonic()
        todo = [(d, r, not r.healthy) for d in self._router.deployments for r in d.replicas
                if r.healthy or r.breaker.try_probe(now)]
        try:
            results = await asyncio.gather(*(self._probe(r) for _, r, _ in todo))
        except BaseException:
            for _, r, probe in todo:
                if probe:
                    r.breaker.release()
            raise
        for (dep, replica, probe), ok in zip(todo, results, strict=True):
            dep.checked(replica, ok, self._config, probe)

    async def _probe(self, replica: Replica) -> bool:
        try:
            return await asyncio.wait_for(replica.engine.health(), self._config.timeout)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - any failure means unhealthy
            return False

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.interval)
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - the checker must outlive any single failure
                log.exception("health check round failed")
