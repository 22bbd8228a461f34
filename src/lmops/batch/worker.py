"""The batch worker: claims items, runs their workflow, settles results in batches; runs job upkeep.

Any number of workers (tasks, processes, hosts) share one database. A worker holds at most
``max_items_in_flight`` items; model calls are limited per model by the ModelCaller, so engines
with continuous batching stay saturated. An empty queue is idle time, not an error. ``stop()``
(SIGTERM) stops claiming, lets in-flight items finish for ``grace`` seconds, settles them and
gives the rest of its leases back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import orjson

from lmops.batch.calls import ItemCaller, ModelCaller
from lmops.batch.job_info import JobInfo
from lmops.batch.metrics import BatchMetrics
from lmops.batch.queue import Claimed, Outcome, Queue
from lmops.batch.workflows.steps import StepOutput
from lmops.batch.workflows.workflow import ItemFailed, StepContext, run_workflow
from lmops.config import BatchConfig
from lmops.ids import new_id

log = logging.getLogger("lmops.batch.worker")


class WorkerHost(Protocol):
    """What a worker needs of the batch service that starts it."""

    config: BatchConfig
    caller: ModelCaller
    queue: Queue
    metrics: BatchMetrics

    async def job_info(self, job_id: str) -> JobInfo | None: ...

    def wake_upkeep(self) -> None: ...

    async def upkeep(self, owner: str) -> bool: ...

    async def wait_upkeep(self, timeout: float) -> None: ...


class Worker:
    def __init__(self, batch: WorkerHost, *, name: str | None = None):
        self.batch = batch
        self.cfg = batch.config
        self.name = name or new_id("worker-")
        self.grace = self.cfg.shutdown_grace
        self._stop = asyncio.Event()
        self._held: dict[str, dict[int, asyncio.Task[None]]] = {}
        self._in_flight = 0
        self._outcomes: list[Outcome] = []
        self._room = asyncio.Event()
        self._flush_now = asyncio.Event()
        self.processed = 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        log.info("worker %s started", self.name)
        helpers = [asyncio.create_task(c) for c in (self._settle_loop(), self._heartbeat_loop(), self._upkeep_loop())]
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._settle()
            await self._release()
            log.info("worker %s stopped after %d items", self.name, self.processed)

    # -- claiming ------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        cap = self.cfg.max_items_in_flight
        while not self._stop.is_set():
            free = cap - self._in_flight
            if free < min(self.cfg.claim_batch, cap) // 2 or free <= 0:
                self._room.clear()
                await _wait(self._room, self._stop, 1.0)
                continue
            try:
                items = await self.batch.queue.claim(min(free, self.cfg.claim_batch))
            except Exception:  # noqa: BLE001 - a database blip: wait and claim again
                log.exception("claim failed")
                await _wait(self._stop, None, self.cfg.poll_seconds)
                continue
            if not items:
                await _wait(self._stop, None, self.cfg.poll_seconds)  # idle
                continue
            for item in items:
                self._in_flight += 1
                self._held.setdefault(item.token, {})[item.id] = asyncio.create_task(self._process(item))

    async def _process(self, item: Claimed) -> None:
        calls = ItemCaller(self.batch.caller)
        try:
            outcome = await self._run_item(item, calls)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in a workflow fails the item, not the worker
            log.exception("item %s failed unexpectedly", item.id)
            outcome = self._failure(item, "worker_error", f"{type(exc).__name__}: {exc}", retryable=True)
        outcome.records = calls.take()  # billed with the outcome, in the transaction that settles it
        self._outcomes.append(outcome)
        if len(self._outcomes) >= self.cfg.claim_batch:
            self._flush_now.set()

    async def _run_item(self, item: Claimed, calls: ItemCaller) -> Outcome:
        job = await self.batch.job_info(item.job_id)
        if job is None:
            return self._failure(item, "job_not_found", "The item's job no longer exists.", retryable=False)
        if item.lease_losses > self.cfg.max_lease_losses:
            return self._failure(item, "lease_expired",
                                 f"The item's lease expired {item.lease_losses} times: each worker that took it "
                                 "died or stalled before finishing it.", retryable=False, status="dead")
        ctx = StepContext(job.workflow, orjson.loads(item.payload), job.params, job.team_id, calls,
                          job.default_model, seed=job.params.get("seed"))
        checkpoint = None
        if len(job.workflow.levels) > 1:  # keep finished steps, so that a crash or retry does not redo them
            if item.attempts > 1:
                ctx.results.update(await self._kept(item))

            async def checkpoint(names: list[str]) -> None:
                records = calls.take()  # the finished steps' calls are billed with them
                try:
                    await self.batch.queue.checkpoint(item, self._rows(item, job, {n: ctx.results[n] for n in names}),
                                                      records)
                except BaseException:
                    calls.records[:0] = records  # not written: they go with the item's outcome
                    raise
        try:
            results = await run_workflow(ctx, checkpoint)
        except ItemFailed as exc:
            f = exc.failure
            out = self._failure(item, f.code, f.message, retryable=f.retryable)
            if out.status in ("failed", "dead"):
                out.results = self._rows(item, job, exc.results)
                out.prompt_tokens = sum(r.prompt_tokens for r in exc.results.values())
                out.completion_tokens = sum(r.completion_tokens for r in exc.results.values())
            self.batch.metrics.step_failed(job, exc.step)
            return out
        self.batch.metrics.observe(job, results)
        out = Outcome(item, "done", self._rows(item, job, results))
        for r in results.values():
            out.prompt_tokens += r.prompt_tokens
            out.completion_tokens += r.completion_tokens
            out.flagged = out.flagged or r.status in ("flagged", "dropped")
        return out

    def _failure(self, item: Claimed, code: str, message: str, *, retryable: bool,
                 status: str | None = None) -> Outcome:
        error = {"code": code, "message": message}
        if status is None:
            status = "failed" if not retryable else ("retry" if item.tries < self.cfg.max_attempts else "dead")
        retry_at = None
        if status == "retry":
            delay = min(self.cfg.backoff_base * 2 ** (item.tries - 1), self.cfg.backoff_max)
            retry_at = time.time() + delay
        return Outcome(item, status, error=error, retry_at=retry_at)

    async def _kept(self, item: Claimed) -> dict[str, StepOutput]:
        return {r.step: StepOutput.from_row(r)
                for r in await self.batch.queue.checkpoints(item.id) if r.status != "error"}

    @staticmethod
    def _rows(item: Claimed, job: JobInfo, results: dict[str, StepOutput]) -> list[dict[str, Any]]:
        now = time.time()
        dumps = orjson.dumps
        hashes = job.workflow.step_hashes  # a kept result (an earlier try's) keeps the hash it ran with
        return [{"item_id": item.id, "step": name, "job_id": item.job_id, "status": r.status,
                 "output": dumps(r.output).decode(), "inputs": dumps(r.inputs).decode() if r.inputs else None,
                 "prompt": r.prompt, "prompt_version": r.prompt_version, "model": r.model, "adapter": r.adapter,
                 "params": dumps(r.params).decode() if r.params else None, "seed": r.seed,
                 "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                 "latency_ms": r.latency_ms, "request": dumps(r.request).decode() if r.request else None,
                 "step_hash": r.step_hash or hashes.get(name), "created_at": now} for name, r in results.items()]

    # -- settling ------------------------------------------------------------------------------
    async def _settle_loop(self) -> None:
        while True:
            await _wait(self._flush_now, None, self.cfg.ack_interval)
            self._flush_now.clear()
            try:
                await self._settle()
            except Exception:  # noqa: BLE001 - keep the outcomes, try again next tick
                log.exception("settling results failed; will retry")
                await asyncio.sleep(self.cfg.poll_seconds)

    async def _settle(self) -> None:
        if not self._outcomes:
            return
        batch, self._outcomes = self._outcomes, []
        try:
            progress = await self.batch.queue.settle(batch)
        except BaseException:
            self._outcomes[:0] = batch
            raise
        for o in batch:
            held = self._held.get(o.item.token)
            if held is not None:
                held.pop(o.item.id, None)
                if not held:
                    del self._held[o.item.token]
        self._in_flight -= len(batch)
        self.processed += len(batch)
        self.batch.metrics.settled(batch)
        self._room.set()
        if any(p.status == "finalizing" for p in progress):
            self.batch.wake_upkeep()

    async def _drain(self) -> None:
        """Stopping: let in-flight items finish for up to ``grace`` seconds."""
        tasks = [t for held in self._held.values() for t in held.values() if not t.done()]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _release(self) -> None:
        settled = {o.item.id for o in self._outcomes}
        held = {token: [i for i in ids if i not in settled] for token, ids in self._held.items()}
        try:
            await self.batch.queue.release(held)
        except Exception:  # noqa: BLE001 - the leases expire on their own
            log.exception("could not release leases")
        self._held.clear()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_seconds)
            try:
                await self.batch.queue.heartbeat({t: list(ids) for t, ids in self._held.items()})
            except Exception:  # noqa: BLE001
                log.exception("heartbeat failed")

    # -- job upkeep: intake, finalizing, cancelling, expiring ---------------------------------
    async def _upkeep_loop(self) -> None:
        while True:
            try:
                worked = await self.batch.upkeep(self.name)
            except Exception:  # noqa: BLE001
                log.exception("job upkeep failed")
                worked = False
            if not worked:
                await self.batch.wait_upkeep(self.cfg.poll_seconds * 2)


async def _wait(event: asyncio.Event, other: asyncio.Event | None, timeout: float) -> None:
    """Wait for ``event`` (or ``other``) at most ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
