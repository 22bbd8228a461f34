"""Enrichment results: one entry per input line with every step's output, paged or streamed as JSONL/CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.batch.tables import ITEMS, RESULTS

SHOWN = ("ok", "flagged")  # outputs a guardrail dropped (or a failed step's) are left out


async def page(db: AsyncEngine, job_id: str, after: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], bool]:
    """Results for lines after line ``after`` (the ``line`` of the previous page's last entry)."""
    q = (select(ITEMS.c.id, ITEMS.c.seq, ITEMS.c.custom_id, ITEMS.c.status, ITEMS.c.error)
         .where(ITEMS.c.job_id == job_id, ITEMS.c.seq > after).order_by(ITEMS.c.seq).limit(limit + 1))
    async with db.connect() as conn:
        items = (await conn.execute(q)).all()
        more = len(items) > limit
        items = items[:limit]
        by_item: dict[int, list[Any]] = {}
        if items:
            rows = await conn.execute(select(RESULTS.c.item_id, RESULTS.c.step, RESULTS.c.status, RESULTS.c.output)
                                      .where(RESULTS.c.item_id.in_([i.id for i in items])))
            for r in rows:
                by_item.setdefault(r.item_id, []).append(r)
    out = []
    for i in items:
        steps = by_item.get(i.id, [])
        out.append({
            "line": i.seq, "id": i.custom_id, "item_id": i.id,
            "status": {"done": "completed"}.get(i.status, i.status),
            "outputs": {r.step: orjson.loads(r.output) if r.output and r.status in SHOWN else None for r in steps},
            "flags": {r.step: r.status for r in steps if r.status != "ok"},
            "error": orjson.loads(i.error) if i.error and i.status != "done" else None,
        })
    return out, more


async def _all(db: AsyncEngine, job_id: str) -> AsyncIterator[list[dict[str, Any]]]:
    after, more = 0, True
    while more:
        entries, more = await page(db, job_id, after, 1000)
        if not entries:
            return
        after = entries[-1]["line"]
        yield entries


async def jsonl(db: AsyncEngine, job_id: str) -> AsyncIterator[bytes]:
    async for entries in _all(db, job_id):
        yield b"".join(orjson.dumps(e) + b"\n" for e in entries)


async def csv_rows(db: AsyncEngine, job_id: str, steps: list[str]) -> AsyncIterator[bytes]:
    header = ["line", "id", "status", "error", *steps]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    async for entries in _all(db, job_id):
        for e in entries:
            err = e["error"]["message"] if e["error"] else ""
            writer.writerow([e["line"], e["id"] or "", e["status"], err,
                             *(_cell(e["outputs"].get(s)) for s in steps)])
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "; ".join(value)
    return orjson.dumps(value).decode()
