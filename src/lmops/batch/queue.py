"""The item queue in the database: claim under a lease, heartbeat, settle (ack / retry / dead-letter).

Exactly-once: an item's final state, its step results and the request records of its model calls (the usage
ledger) are written in one transaction, and only while the writer still holds the item's lease (its
``lease_token``, fresh per claim). A worker whose lease expired and whose item was claimed again writes
nothing; results are unique per (item, step) besides, so no crash at any moment loses or duplicates a result
or bills a call twice (the calls of a try that did not count are not billed: their results are not kept).

A claim that takes an item whose lease expired counts a ``lease_losses`` (its worker died or stalled), not a
failed try: ``attempts - lease_losses`` is what ``max_attempts`` limits, so a rolling deploy or an OOM kill
never dead-letters a healthy item; ``max_lease_losses`` stops an item that kills every worker it reaches.

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` (workers never wait for each other); SQLite
claims in ``BEGIN IMMEDIATE`` transactions (one writer at a time), a correct equivalent.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import BindParameter, bindparam, case, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.batch.db import insert_ignore, is_postgres, queue_engine, retry_conflicts, upsert
from lmops.batch.tables import ITEMS, JOBS, RESULTS
from lmops.ids import new_id
from lmops.usage.records import RECORDS


CLAIM = """
UPDATE batch_items SET status = 'leased', lease_token = :token, available_at = :until, attempts = attempts + 1,
    lease_losses = lease_losses + CASE WHEN status = 'leased' THEN 1 ELSE 0 END
WHERE id IN (
    SELECT id FROM batch_items WHERE status IN ('pending', 'leased') AND available_at <= :now
    ORDER BY available_at LIMIT :n {lock}
)
RETURNING id, job_id, team_id, workflow, seq, custom_id, payload, attempts, lease_token, lease_losses
"""


RESULT_TYPES = {"item_id": "bigint", "step": "text", "job_id": "text", "status": "text", "output": "text",
                "inputs": "text", "prompt": "text", "prompt_version": "text", "model": "text", "adapter": "text",
                "params": "text", "seed": "bigint", "prompt_tokens": "int", "completion_tokens": "int",
                "latency_ms": "float8", "request": "text", "step_hash": "text", "created_at": "float8"}
RESULT_COLUMNS = tuple(RESULT_TYPES)
RESULT_DEFAULTS = {"prompt_tokens": 0, "completion_tokens": 0, "latency_ms": 0.0}
RESULT_UPDATED = tuple(c for c in RESULT_COLUMNS if c not in ("item_id", "step", "job_id"))
# PostgreSQL: every result row of a settle in one statement, one array per column (no per-row parameters).
# The owner of the lease may overwrite its own checkpoints (a guardrail can redo or flag an earlier step).
UNNEST_RESULTS = text(
    f"INSERT INTO batch_results ({', '.join(RESULT_COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'CAST(:{c} AS {t}[])' for c, t in RESULT_TYPES.items())}) "
    f"ON CONFLICT (item_id, step) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in RESULT_UPDATED)}")
# The request records (usage ledger rows) of the settled items' calls, the same way: one statement per settle.
RECORD_TYPES = {"id": "text", "request_id": "text", "created_at": "timestamptz", "endpoint": "text", "model": "text",
                "adapter": "text", "replica": "text", "stream": "boolean", "prompt_tokens": "int",
                "completion_tokens": "int", "latency_ms": "float8", "ttft_ms": "float8", "status": "int",
                "error": "text", "team_id": "text", "user_id": "text", "key_id": "text", "cost_usd": "float8",
                "day": "date"}
UNNEST_RECORDS = text(
    f"INSERT INTO request_records ({', '.join(RECORD_TYPES)}) "
    f"SELECT * FROM unnest({', '.join(f'CAST(:{c} AS {t}[])' for c, t in RECORD_TYPES.items())})")


@dataclass(slots=True)
class Claimed:
    id: int
    job_id: str
    team_id: str
    workflow: str
    seq: int
    custom_id: str | None
    payload: str
    attempts: int
    token: str
    lease_losses: int = 0

    @property
    def tries(self) -> int:
        """The tries that count against ``max_attempts``, this one included: those whose worker did not die."""
        return self.attempts - self.lease_losses


@dataclass(slots=True)
class Outcome:
    """How one claimed item ended this time: ``done`` / ``failed`` (final), ``retry`` (later), ``dead``.

    ``records``: the request records of the model calls this try made, billed with the outcome.
    """

    item: Claimed
    status: str
    results: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    retry_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    flagged: bool = False


@dataclass(slots=True)
class JobProgress:
    id: str
    status: str
    total: int
    completed: int
    failed: int

    @property
    def finished(self) -> bool:
        return self.completed + self.failed >= self.total


class Queue:
    def __init__(self, db: AsyncEngine, lease_seconds: float):
        self.db = queue_engine(db)
        self.lease_seconds = lease_seconds
        self._claim = text(CLAIM.format(lock="FOR UPDATE SKIP LOCKED" if is_postgres(db) else ""))
        self._results = upsert(self.db, RESULTS, ("item_id", "step"), RESULT_UPDATED)
        self._checkpoint = insert_ignore(self.db, RESULTS, "item_id", "step")
        self._owns = select(ITEMS.c.id).where(ITEMS.c.id == bindparam("id"), ITEMS.c.status == "leased",
                                              ITEMS.c.lease_token == bindparam("token"))
        if is_postgres(db):
            self._owns = self._owns.with_for_update()
        self._pg = is_postgres(db)
        self._reader = None if self._pg else db
        self._any = text("SELECT 1 FROM batch_items WHERE status IN ('pending', 'leased') AND available_at <= :now "
                         "LIMIT 1")
        ids: BindParameter[list[int]] = bindparam("ids", expanding=True)
        self._ack = (update(ITEMS)
                     .where(ITEMS.c.id.in_(ids), ITEMS.c.lease_token == bindparam("token"),
                            ITEMS.c.status == "leased")
                     .values(status=bindparam("new_status"), lease_token=None, finished_at=bindparam("now"))
                     .returning(ITEMS.c.id))
        self._heartbeat = (update(ITEMS)
                           .where(ITEMS.c.id.in_(ids), ITEMS.c.lease_token == bindparam("token"),
                                  ITEMS.c.status == "leased")
                           .values(available_at=bindparam("until")))

    async def close(self) -> None:
        await self.db.dispose()

    @retry_conflicts
    async def claim(self, n: int) -> list[Claimed]:
        """Lease up to ``n`` claimable items (new, due for retry, or with an expired lease)."""
        now = time.time()
        token = new_id()
        if self._reader is not None:  # SQLite: look before taking the one write lock (idle polls stay reads)
            async with self._reader.connect() as conn:
                if (await conn.execute(self._any, {"now": now})).first() is None:
                    return []
        async with self.db.begin() as conn:
            rows = (await conn.execute(self._claim, {"token": token, "until": now + self.lease_seconds,
                                                     "now": now, "n": n})).all()
        return [Claimed(*r) for r in rows]

    @retry_conflicts
    async def heartbeat(self, held: dict[str, list[int]]) -> None:
        """Extend the leases this worker holds (token -> item ids)."""
        until = time.time() + self.lease_seconds
        params = [{"ids": ids, "token": token, "until": until} for token, ids in held.items() if ids]
        if params:
            async with self.db.begin() as conn:
                for p in params:
                    await conn.execute(self._heartbeat, p)

    @retry_conflicts
    async def release(self, held: dict[str, list[int]]) -> None:
        """Give leased items back untouched (graceful shutdown): claimable at once, the try not counted."""
        stmt = (update(ITEMS).where(ITEMS.c.id.in_(bindparam("ids", expanding=True)),
                                    ITEMS.c.lease_token == bindparam("token"), ITEMS.c.status == "leased")
                .values(status="pending", lease_token=None, available_at=bindparam("now"),
                        attempts=ITEMS.c.attempts - 1))
        now = time.time()
        async with self.db.begin() as conn:
            for token, ids in held.items():
                if ids:
                    await conn.execute(stmt, {"ids": ids, "token": token, "now": now})

    @retry_conflicts
    async def checkpoint(self, item: Claimed, rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> bool:
        """Keep finished steps of an unfinished item (multi-step workflows), and bill their calls, while its lease
        is ours."""
        async with self.db.begin() as conn:
            if (await conn.execute(self._owns, {"id": item.id, "token": item.token})).first() is None:
                return False
            await conn.execute(self._checkpoint, rows)
            await self._bill(conn, records)
        return True

    async def checkpoints(self, item_id: int) -> list[Any]:
        """The step results an earlier try of this item kept."""
        async with self.db.connect() as conn:
            return list(await conn.execute(select(RESULTS).where(RESULTS.c.item_id == item_id)))

    @retry_conflicts
    async def settle(self, outcomes: list[Outcome]) -> list[JobProgress]:
        """Write outcomes in one transaction; items whose lease was lost are skipped entirely."""
        now = time.time()
        final: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
        retries: list[Outcome] = []
        for o in outcomes:
            (retries.append(o) if o.status == "retry" else final[(o.item.token, o.status)].append(o))
        async with self.db.begin() as conn:
            owned: list[Outcome] = []
            for (token, status), group in final.items():
                if status == "done":
                    res = await conn.execute(self._ack, {"ids": [o.item.id for o in group], "token": token,
                                                         "new_status": status, "now": now})
                    ok = {r[0] for r in res}
                    owned.extend(o for o in group if o.item.id in ok)
                else:
                    for o in group:  # failures are rare: one statement each, with their own error
                        res = await conn.execute(
                            update(ITEMS).where(ITEMS.c.id == o.item.id, ITEMS.c.lease_token == token,
                                                ITEMS.c.status == "leased")
                            .values(status=status, lease_token=None, finished_at=now,
                                    error=orjson.dumps(o.error).decode()).returning(ITEMS.c.id))
                        if res.first():
                            owned.append(o)
            retried = []
            for o in retries:
                res = await conn.execute(
                    update(ITEMS).where(ITEMS.c.id == o.item.id, ITEMS.c.lease_token == o.item.token,
                                        ITEMS.c.status == "leased")
                    .values(status="pending", lease_token=None, available_at=o.retry_at,
                            error=orjson.dumps(o.error).decode()).returning(ITEMS.c.id))
                if res.first():
                    retried.append(o)
            await self._bill(conn, [r for o in (*owned, *retried) for r in o.records])
            rows = [r for o in owned for r in o.results]
            if rows:
                if self._pg:
                    columns = {c: [r.get(c, RESULT_DEFAULTS.get(c)) for r in rows] for c in RESULT_COLUMNS}
                    await conn.execute(UNNEST_RESULTS, columns)
                else:
                    await conn.execute(self._results, rows)
            return await self._count(conn, owned, now)

    async def _bill(self, conn: Any, records: list[dict[str, Any]]) -> None:
        """Write the request records of calls whose item this transaction settles (or checkpoints)."""
        if not records:
            return
        if self._pg:
            await conn.execute(UNNEST_RECORDS, {c: [r[c] for r in records] for c in RECORD_TYPES})
        else:
            await conn.execute(insert(RECORDS), records)

    async def _count(self, conn: Any, owned: list[Outcome], now: float) -> list[JobProgress]:
        per_job: dict[str, list[int]] = {}
        for o in owned:
            c = per_job.setdefault(o.item.job_id, [0, 0, 0, 0, 0])
            c[0 if o.status == "done" else 1] += 1
            c[2] += o.flagged
            c[3] += o.prompt_tokens
            c[4] += o.completion_tokens
        progress = []
        for job_id in sorted(per_job):  # one order for every worker: no deadlocks between them
            done, failed, flagged, pt, ct = per_job[job_id]
            finished = (JOBS.c.status == "in_progress") & (JOBS.c.completed + JOBS.c.failed + done + failed
                                                           >= JOBS.c.total)
            row = (await conn.execute(
                update(JOBS).where(JOBS.c.id == job_id)
                .values(status=case((finished, "finalizing"), else_=JOBS.c.status),
                        finalizing_at=case((finished, int(now)), else_=JOBS.c.finalizing_at),
                        completed=JOBS.c.completed + done, failed=JOBS.c.failed + failed,
                        flagged=JOBS.c.flagged + flagged, prompt_tokens=JOBS.c.prompt_tokens + pt,
                        completion_tokens=JOBS.c.completion_tokens + ct)
                .returning(JOBS.c.id, JOBS.c.status, JOBS.c.total, JOBS.c.completed, JOBS.c.failed))).first()
            if row is not None:
                progress.append(JobProgress(*row))
        return progress
