"""The core every capability builds on: settings, engines behind the router, health checks, metrics, the
database, request records and the inference path, started and stopped together.

No module-level state: each app (and each test) gets its own Core. Capabilities (access, batch, ...) are
built on top of it by the composition root (``lmops.services``) and never import that root back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.config import Settings
from lmops.engines.factory import build_engines
from lmops.observability.metrics import Metrics
from lmops.protocol.errors import ModelNotFound
from lmops.protocol.responses import model_card
from lmops.routing.health import HealthChecker
from lmops.routing.replicas import Deployment, Replica
from lmops.routing.router import Router, Target
from lmops.serving.context import Guard
from lmops.serving.inference import InferenceService
from lmops.serving.virtual import ChatHandler
from lmops.store.database import upgrade_async
from lmops.usage.batch_writer import BatchWriter
from lmops.usage.records import RECORDS

log = logging.getLogger("lmops")


@dataclass
class Core:
    settings: Settings
    router: Router
    metrics: Metrics
    db: AsyncEngine
    records: BatchWriter
    health: HealthChecker
    inference: InferenceService
    guard: Guard

    @classmethod
    def build(cls, settings: Settings, db: AsyncEngine, guard: Guard) -> "Core":
        deployments = [
            Deployment(m, [Replica(e) for e in build_engines(m, settings)]) for m in settings.models
        ]
        router = Router(deployments, settings.health)
        metrics = Metrics()
        metrics.watch_router(router)
        records = BatchWriter(
            db, RECORDS,
            flush_interval=settings.usage.flush_interval, batch_size=settings.usage.batch_size,
            max_pending=settings.usage.max_pending, on_drop=metrics.records_dropped.inc,
        )
        metrics.watch_unflushed_rows(lambda: records.pending)
        return cls(settings=settings, router=router, metrics=metrics, db=db, records=records,
                   health=HealthChecker(router, settings.health),
                   inference=InferenceService(router, metrics, records, guard), guard=guard)

    async def start(self, *, migrate: bool = True) -> None:
        if migrate:
            await upgrade_async(self.settings.database_url)
        await asyncio.gather(*(r.engine.start() for d in self.router.deployments for r in d.replicas))
        self.records.start()
        self.health.start()

    async def stop(self) -> None:
        await self.health.stop()
        try:
            await self.records.stop()
        except Exception:  # noqa: BLE001 - report, but still release everything else
            log.exception("could not flush request records at shutdown")
        await asyncio.gather(*(r.engine.close() for d in self.router.deployments for r in d.replicas),
                             return_exceptions=True)
        await self.db.dispose()

    # -- small helpers the routers share -------------------------------------------------------
    def model_cards(self, allowed: Callable[[str], bool] | None = None, *,
                    virtual: bool = False) -> list[dict[str, Any]]:
        """Cards of every public name (adapters as ``model:adapter``), those ``allowed`` accepts when given;
        ``virtual``: then the virtual models (the assistant) whose every inner model is allowed."""
        cards = [_card(t) for t in self.router.targets if allowed is None or allowed(t.name)]
        if virtual:
            cards += [model_card(name) for name, handler in self.inference.virtual.items()
                      if _may_use(handler, allowed)]
        return cards

    def model_card(self, name: str, allowed: Callable[[str], bool] | None = None, *,
                   virtual: bool = False) -> dict[str, Any]:
        """The card of ``name``; 404 when unknown or not ``allowed`` (a hidden model is not revealed)."""
        handler = self.inference.virtual.get(name) if virtual else None
        if handler is not None:
            if not _may_use(handler, allowed):
                raise ModelNotFound(name)
            return model_card(name)
        target = self.router.find(name)
        if target is None or (allowed is not None and not allowed(name)):
            raise ModelNotFound(name)
        return _card(target)


def _may_use(handler: ChatHandler, allowed: Callable[[str], bool] | None) -> bool:
    return allowed is None or all(allowed(m) for m in handler.models)


def _card(target: Target) -> dict[str, Any]:
    owned_by = target.config.engine.value
    if target.adapter is None:
        return model_card(target.name, owned_by=owned_by)
    return model_card(target.name, owned_by=owned_by, parent=target.deployment.name, root=target.upstream_name)
