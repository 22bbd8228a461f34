"""The batch service: files, jobs, queue, workflows and workers, built on the core (routes: batch/routes/)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from lmops.batch.calls import ModelCaller
from lmops.batch.files import FileStore
from lmops.batch.finalize import REQUEST_STEP, write_batch_files
from lmops.batch.intake import Intake
from lmops.batch.job_info import JobInfo
from lmops.batch.jobs import Jobs
from lmops.batch.metrics import BatchMetrics
from lmops.batch.queue import Queue
from lmops.batch.workflows import RequestStep, Workflow, WorkflowRegistry
from lmops.batch.workflows import examples
from lmops.core import Core

log = logging.getLogger("lmops.batch")
OPENAI_WORKFLOW = "openai-batch"
JOB_CACHE_SIZE = 1024


class BatchService:
    def __init__(self, core: Core):
        self.core = core
        self.config = cfg = core.settings.batch
        self.files = FileStore(core.db, cfg.data_dir, cfg.max_upload_bytes)
        self.jobs = Jobs(core.db, cfg.lease_seconds)
        self.queue = Queue(core.db, cfg.lease_seconds)
        self.caller = ModelCaller(core, cfg.concurrency, cfg.model_concurrency)
        self.registry = WorkflowRegistry()
        examples.register(self.registry)
        for module in cfg.workflow_modules:
            self.registry.load_module(module)
        self.registry.load_entry_points()
        models = {t.name for t in core.router.targets}  # adapters too: "<model>:<adapter>"
        self.intake = Intake(self.jobs, self.files, models, cfg.intake_chunk, cfg.max_line_bytes)
        self.metrics = BatchMetrics(core.metrics, core.db, cfg.metrics_interval)
        chat_models = [m.name for m in core.settings.models if m.engine.value != "sentence-transformers"]
        self.default_model = cfg.default_model or (chat_models[0] if chat_models else None)
        self._jobs: dict[str, asyncio.Future[JobInfo | None]] = {}
        self._upkeep = asyncio.Event()
        self._openai = {path: Workflow(OPENAI_WORKFLOW, (RequestStep(REQUEST_STEP, endpoint=path),))
                        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")}
        self._worker_task: asyncio.Task[None] | None = None
        self.worker: Any = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, *, worker: bool | None = None) -> None:
        self.metrics.start()
        if self.config.worker_in_process if worker is None else worker:
            self.start_worker()

    def start_worker(self, **kwargs: Any) -> None:
        from lmops.batch.worker import Worker

        self.worker = Worker(self, **kwargs)
        self._worker_task = asyncio.create_task(self.worker.run(), name="lmops-batch-worker")

    async def wait_worker(self) -> None:
        """Until the worker started here stops (after ``worker.stop()``)."""
        if self._worker_task is not None:
            await self._worker_task

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            await asyncio.gather(self._worker_task, return_exceptions=True)  # type: ignore[arg-type]
        await self.metrics.stop()
        await self.queue.close()

    # -- for the worker ------------------------------------------------------------------------
    async def job_info(self, job_id: str) -> JobInfo | None:
        """The job's workflow and params, loaded once per job by one task (concurrent callers share it)."""
        fut = self._jobs.get(job_id)
        if fut is None:
            if len(self._jobs) >= JOB_CACHE_SIZE:
                del self._jobs[next(iter(self._jobs))]  # the oldest entry
            fut = self._jobs[job_id] = asyncio.ensure_future(self._load_job(job_id))
            fut.add_done_callback(lambda f: self._forget_failed(job_id, f))
        return await asyncio.shield(fut)

    def _forget_failed(self, job_id: str, fut: "asyncio.Future[JobInfo | None]") -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._jobs.pop(job_id, None)

    async def _load_job(self, job_id: str) -> JobInfo | None:
        row = await self.jobs.row(job_id)
        if row is None:
            return None
        params = orjson.loads(row.params or "{}")
        if row.kind == "batch":
            return JobInfo(row.team_id, row.kind, self._openai[row.endpoint], params, None)
        found = self.registry.get(row.workflow, row.team_id)
        if found is None:
            raise LookupError(f"workflow {row.workflow!r} is not registered in this worker")
        workflow, defaults = found
        params = {**defaults, **params}
        return JobInfo(row.team_id, row.kind, workflow, params, params.get("model") or self.default_model)

    def wake_upkeep(self) -> None:
        self._upkeep.set()

    async def wait_upkeep(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._upkeep.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._upkeep.clear()

    async def upkeep(self, owner: str) -> bool:
        """Do one job's pending background work; False when there was none."""
        job = await self.jobs.take_work(owner)
        if job is None:
            return False
        now = int(time.time())
        if job.status == "validating":
            if job.kind == "enrichment" and job.workflow_hash is None:  # before any of its items runs
                await self.jobs.pin_workflow(job.id, self.registry.version(job.workflow, job.team_id))
            await self.intake.run(job, owner)
        elif job.status == "in_progress":  # past its completion window
            await self.jobs.expire_items(job.id)
            await self._finalize(job, owner, "expired", expired_at=now)
        elif job.status == "cancelling":
            await self._finalize(job, owner, "cancelled", cancelled_at=now)
        elif job.status == "finalizing":
            await self._finalize(job, owner, "completed", completed_at=now)
        return True

    async def _finalize(self, job: Any, owner: str, status: str, **stamps: Any) -> None:
        fields: dict[str, Any] = dict(stamps)
        if job.kind == "batch":
            fields["output_file_id"], fields["error_file_id"] = await write_batch_files(
                self.jobs.db, self.files, job)
        await self.jobs.finish(job.id, owner, status, **fields)
        log.info("job %s %s", job.id, status)
