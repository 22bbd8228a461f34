"""Batch scaling signals for /metrics: queue depth and oldest pending age per tenant/workflow (a snapshot
refreshed in the background), items settled, step latency and failures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.batch.tables import ITEMS
from lmops.observability.metrics import LATENCY_BUCKETS, Metrics

if TYPE_CHECKING:
    from lmops.batch.queue import Outcome
    from lmops.batch.job_info import JobInfo
    from lmops.batch.workflows.steps import StepOutput

log = logging.getLogger("lmops.batch")


class BatchMetrics:
    def __init__(self, metrics: Metrics, db: AsyncEngine, interval: float):
        r = metrics.registry
        self.db, self.interval = db, interval
        self.items = Counter("lmops_batch_items", "Batch items settled", ["team", "workflow", "status"], registry=r)
        self.steps = Histogram("lmops_batch_step_latency_seconds", "Workflow step latency (model time included)",
                               ["workflow", "step"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_failures = Counter("lmops_batch_step_failures", "Workflow steps that failed",
                                     ["workflow", "step"], registry=r)
        self._step_children: dict[tuple[str, str], Any] = {}
        self._depth: list[tuple[str, str, str, int, float]] = []
        self._task: asyncio.Task[None] | None = None
        metrics.add_collector(self._collect)

    def observe(self, job: "JobInfo", results: dict[str, "StepOutput"]) -> None:
        for name, r in results.items():
            if r.latency_ms:
                key = (job.workflow.name, name)
                child = self._step_children.get(key)
                if child is None:
                    child = self._step_children[key] = self.steps.labels(*key)
                child.observe(r.latency_ms / 1000.0)

    def step_failed(self, job: "JobInfo", step: str) -> None:
        self.step_failures.labels(job.workflow.name, step).inc()

    def settled(self, outcomes: list["Outcome"]) -> None:
        counts: dict[tuple[str, str, str], int] = {}
        for o in outcomes:
            key = (o.item.team_id, o.item.workflow, o.status)
            counts[key] = counts.get(key, 0) + 1
        for labels, n in counts.items():
            self.items.labels(*labels).inc(n)

    async def refresh(self) -> None:
        q = (select(ITEMS.c.team_id, ITEMS.c.workflow, ITEMS.c.status, func.count(), func.min(ITEMS.c.created_at))
             .where(ITEMS.c.status.in_(("pending", "leased")))
             .group_by(ITEMS.c.team_id, ITEMS.c.workflow, ITEMS.c.status))
        async with self.db.connect() as conn:
            self._depth = [tuple(r) for r in (await conn.execute(q)).all()]  # type: ignore[misc]

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="lmops-batch-metrics")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - metrics must never take the service down
                log.debug("queue depth snapshot failed", exc_info=True)
            await asyncio.sleep(self.interval)

    def _collect(self) -> Iterable[Any]:
        depth = GaugeMetricFamily("lmops_batch_queue_depth", "Items waiting or in progress",
                                  labels=["team", "workflow", "status"])
        oldest = GaugeMetricFamily("lmops_batch_oldest_pending_age_seconds", "Age of the oldest unfinished item",
                                   labels=["team", "workflow"])
        now = time.time()
        ages: dict[tuple[str, str], float] = {}
        for team, workflow, status, n, first in self._depth:
            depth.add_metric([team, workflow, status], n)
            ages[(team, workflow)] = max(ages.get((team, workflow), 0.0), now - (first or now))
        for (team, workflow), age in ages.items():
            oldest.add_metric([team, workflow], age)
        yield from (depth, oldest)
