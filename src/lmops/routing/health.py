"""Active health checks: probe every replica periodically; ejected replicas return when healthy."""

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
        replicas = [r for d in self._router.deployments for r in d.replicas]
        results = await asyncio.gather(*(self._probe(r) for r in replicas))
        now = time.monotonic()
        for replica, ok in zip(replicas, results, strict=True):
            cooling = replica.ejected_at is not None and now - replica.ejected_at < self._config.cooldown
            if ok and cooling:
                continue
            if ok:
                if not replica.healthy:
                    log.info("replica back in the pool", extra={"replica": replica.endpoint})
                replica.record_success()
            else:
                was = replica.healthy
                replica.record_failure(self._config.failure_threshold)
                if was and not replica.healthy:
                    log.warning("replica ejected by health check", extra={"replica": replica.endpoint})

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
