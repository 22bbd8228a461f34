"""Replay: run one step of one item again, in isolation, with the inputs its lineage recorded."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select

from lmops.batch.service import BatchService
from lmops.batch.tables import ITEMS, RESULTS
from lmops.batch.workflows.steps import StepFailed, StepOutput
from lmops.batch.workflows.workflow import StepContext



@dataclass
class Replay:
    item_id: int
    step: str
    before: Any
    after: StepOutput
    error: str | None = None

    def diff(self) -> str:
        old = _pretty(self.before).splitlines()
        new = _pretty(self.after.output).splitlines()
        return "\n".join(difflib.unified_diff(old, new, "recorded", "replayed", lineterm=""))

    @property
    def same(self) -> bool:
        return self.before == self.after.output


async def replay(batch: BatchService, item_id: int, step: str) -> Replay:
    """Re-run ``step`` for ``item_id``: the record and the recorded outputs of earlier steps as inputs."""
    async with batch.jobs.db.connect() as conn:
        item = (await conn.execute(select(ITEMS).where(ITEMS.c.id == item_id))).first()
        if item is None:
            raise LookupError(f"no item {item_id}")
        rows = {r.step: r for r in await conn.execute(select(RESULTS).where(RESULTS.c.item_id == item_id))}
    job = await batch.job_info(item.job_id)
    if job is None:
        raise LookupError(f"the job of item {item_id} no longer exists")
    try:
        target = job.workflow.step(step)
    except KeyError:
        raise LookupError(f"workflow {job.workflow.name!r} has no step {step!r}; "
                          f"steps: {', '.join(job.workflow.step_names)}") from None
    ctx = StepContext(job.workflow, orjson.loads(item.payload), job.params, job.team_id, batch.caller,
                      job.default_model, seed=job.params.get("seed"))
    for name, r in rows.items():
        if name != step:
            ctx.results[name] = StepOutput(orjson.loads(r.output) if r.output else None, status=r.status)
    before = orjson.loads(rows[step].output) if step in rows and rows[step].output else None
    try:
        after = await target.run(ctx)
    except StepFailed as exc:
        return Replay(item_id, step, before, StepOutput(exc.output, status="error"), f"{exc.code}: {exc.message}")
    return Replay(item_id, step, before, after)


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
