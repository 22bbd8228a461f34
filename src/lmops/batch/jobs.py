"""Jobs: OpenAI batches and enrichment jobs share one table and one lifecycle.

validating (intake reads and checks the input, queues items) -> in_progress -> finalizing (output and
error files) -> completed; or failed (invalid input), expired (past the completion window),
cancelling -> cancelled. Background work on a job (intake, finalizing, cancelling, expiring) is
leased to one worker at a time through ``owner`` / ``owner_until``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import case, delete, insert, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.batch.db import is_postgres, retry_conflicts
from lmops.ids import new_id
from lmops.batch.tables import ITEMS, JOBS
from lmops.protocol.errors import InvalidRequest, NotFound

WINDOWS = {"24h": 24 * 3600}
ACTIVE = ("validating", "in_progress", "finalizing")
FINAL = ("completed", "failed", "expired", "cancelled")
NAMES = {"batch": "Batch", "enrichment": "Enrichment job"}

WORK = ("(status IN ('validating', 'finalizing', 'cancelling') OR (status = 'in_progress' AND expires_at < :inow))"
        " AND (owner_until IS NULL OR owner_until < :now)")
TAKE_WORK = """
UPDATE batch_jobs SET owner = :owner, owner_until = :until WHERE id = (
    SELECT id FROM batch_jobs WHERE """ + WORK + """ ORDER BY created_at LIMIT 1 {lock}
) RETURNING *
"""


class Jobs:
    def __init__(self, db: AsyncEngine, lease_seconds: float):
        self.db = db
        self.lease_seconds = lease_seconds
        self._take = text(TAKE_WORK.format(lock="FOR UPDATE SKIP LOCKED" if is_postgres(db) else ""))
        self._any_work = text(f"SELECT 1 FROM batch_jobs WHERE {WORK} LIMIT 1")

    async def create(self, *, team_id: str, kind: str, workflow: str, input_file_id: str,
                     endpoint: str | None = None, completion_window: str = "24h",
                     metadata: dict[str, Any] | None = None, params: dict[str, Any] | None = None) -> Any:
        now = int(time.time())
        job_id = new_id("batch_" if kind == "batch" else "job_")
        row = {"id": job_id, "team_id": team_id, "kind": kind,
               "workflow": workflow, "endpoint": endpoint, "input_file_id": input_file_id,
               "completion_window": completion_window,
               "meta": orjson.dumps(metadata).decode() if metadata is not None else None,
               "params": orjson.dumps(params or {}).decode(), "status": "validating", "created_at": now,
               "expires_at": now + WINDOWS.get(completion_window, 24 * 3600)}
        async with self.db.begin() as conn:
            await conn.execute(insert(JOBS), row)
        return await self.get(team_id, job_id, kind)

    async def get(self, team_id: str, job_id: str, kind: str) -> Any:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(JOBS).where(JOBS.c.id == job_id, JOBS.c.team_id == team_id,
                                                         JOBS.c.kind == kind))).first()
        if row is None:
            raise NotFound(f"No such {NAMES[kind]}: {job_id}", param="id")
        return row

    async def row(self, job_id: str) -> Any:
        async with self.db.connect() as conn:
            return (await conn.execute(select(JOBS).where(JOBS.c.id == job_id))).first()

    async def list(self, team_id: str, kind: str, *, after: str | None = None,
                   limit: int = 20) -> tuple[list[Any], bool]:
        """Newest first; ``after`` is the last id of the previous page (cursor pagination)."""
        q = select(JOBS).where(JOBS.c.team_id == team_id, JOBS.c.kind == kind)
        if after:
            cur = await self.get(team_id, after, kind)
            q = q.where(tuple_(JOBS.c.created_at, JOBS.c.id) < (cur.created_at, cur.id))
        q = q.order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc()).limit(limit + 1)
        async with self.db.connect() as conn:
            rows = list((await conn.execute(q)).all())
        return rows[:limit], len(rows) > limit

    @retry_conflicts
    async def cancel(self, team_id: str, job_id: str, kind: str) -> Any:
        job = await self.get(team_id, job_id, kind)
        if job.status in ("cancelling", "cancelled"):
            return job
        if job.status not in ACTIVE:
            raise InvalidRequest(f"Cannot cancel a {NAMES[kind].lower()} whose status is {job.status}.",
                                 code="invalid_state")
        now = int(time.time())
        async with self.db.begin() as conn:  # items first, then the job: the order every writer uses
            await conn.execute(update(ITEMS).where(ITEMS.c.job_id == job_id,
                                                   ITEMS.c.status.in_(("staged", "pending", "leased")))
                               .values(status="cancelled", lease_token=None, finished_at=time.time()))
            await conn.execute(update(JOBS).where(JOBS.c.id == job_id, JOBS.c.status.in_(ACTIVE))
                               .values(status="cancelling", cancelling_at=now, owner=None, owner_until=None))
        return await self.get(team_id, job_id, kind)

    # -- background work -----------------------------------------------------------------------
    @retry_conflicts
    async def take_work(self, owner: str) -> Any:
        """Lease one job that needs intake, finalizing, cancelling or expiring (None when there is none)."""
        now = time.time()
        params = {"now": now, "inow": int(now)}
        async with self.db.connect() as conn:  # look first: an idle poll stays a read
            if (await conn.execute(self._any_work, params)).first() is None:
                return None
        async with self.db.begin() as conn:
            return (await conn.execute(self._take, {"owner": owner, "until": now + self.lease_seconds,
                                                    "now": now, "inow": int(now)})).first()

    async def pin_workflow(self, job_id: str, version: str | None) -> None:
        """Keep the version of the workflow a job was submitted with (the first one recorded stays)."""
        if version is None:
            return
        async with self.db.begin() as conn:
            await conn.execute(update(JOBS).where(JOBS.c.id == job_id, JOBS.c.workflow_hash.is_(None))
                               .values(workflow_hash=version))

    async def status(self, job_id: str) -> str | None:
        async with self.db.connect() as conn:
            return (await conn.execute(select(JOBS.c.status).where(JOBS.c.id == job_id))).scalar()

    @retry_conflicts
    async def queue_items(self, job_id: str, owner: str, insert_items: Any, rows: Sequence[dict[str, Any]],
                          intake: str) -> bool:
        """Intake: queue ``rows`` and save how far intake got (``intake``) in one transaction, and extend the
        owner's lease; nothing is written (False) unless ``owner`` still holds the job's intake."""
        async with self.db.connect() as conn:
            async with conn.begin() as tx:  # items first, then the job: the order every writer uses
                if rows:
                    await conn.execute(insert_items, rows)
                owned = (await conn.execute(
                    update(JOBS).where(JOBS.c.id == job_id, JOBS.c.owner == owner, JOBS.c.status == "validating")
                    .values(intake=intake, owner_until=time.time() + self.lease_seconds)
                    .returning(JOBS.c.id))).first()
                if owned is None:
                    await tx.rollback()
                    return False
        return True

    @retry_conflicts
    async def started(self, job_id: str, owner: str, total: int, bad: int, errors: Sequence[dict[str, Any]],
                      *, release_staged: bool = False) -> None:
        """Intake is over: ``total`` items queued (``bad`` of them already failed); ``release_staged``: make the
        items that waited for the whole file to be checked (an OpenAI batch's) claimable, in the same
        transaction."""
        finished = JOBS.c.completed + JOBS.c.failed + bad >= total
        now = time.time()
        async with self.db.begin() as conn:
            if release_staged:
                await conn.execute(update(ITEMS).where(ITEMS.c.job_id == job_id, ITEMS.c.status == "staged")
                                   .values(status="pending", available_at=now))
            await conn.execute(
                update(JOBS).where(JOBS.c.id == job_id, JOBS.c.status == "validating")
                .values(total=total, failed=JOBS.c.failed + bad, in_progress_at=int(now),
                        status=case((finished, "finalizing"), else_="in_progress"),
                        finalizing_at=case((finished, int(now)), else_=None),
                        errors=orjson.dumps({"object": "list", "data": errors}).decode() if errors else None,
                        owner=None, owner_until=None))

    @retry_conflicts
    async def fail_intake(self, job_id: str, owner: str, errors: str) -> None:
        """The input is invalid: the job fails, and the items staged while its lines were checked go."""
        async with self.db.begin() as conn:
            await conn.execute(delete(ITEMS).where(ITEMS.c.job_id == job_id, ITEMS.c.status == "staged"))
            await conn.execute(update(JOBS).where(JOBS.c.id == job_id, JOBS.c.owner == owner)
                               .values(status="failed", failed_at=int(time.time()), errors=errors, owner=None,
                                       owner_until=None))

    @retry_conflicts
    async def finish(self, job_id: str, owner: str, status: str, **fields: Any) -> None:
        """Move a job to a final status (or any status) and release it."""
        async with self.db.begin() as conn:
            await conn.execute(update(JOBS).where(JOBS.c.id == job_id, JOBS.c.owner == owner)
                               .values(status=status, owner=None, owner_until=None, **fields))

    async def expire_items(self, job_id: str) -> None:
        err = orjson.dumps({"code": "batch_expired", "message": "This request could not be executed before the "
                                                                "completion window expired."}).decode()
        async with self.db.begin() as conn:
            res = await conn.execute(update(ITEMS).where(ITEMS.c.job_id == job_id,
                                                         ITEMS.c.status.in_(("pending", "leased")))
                                     .values(status="expired", lease_token=None, error=err,
                                             finished_at=time.time()))
            await conn.execute(update(JOBS).where(JOBS.c.id == job_id)
                               .values(failed=JOBS.c.failed + res.rowcount))

