"""Finalizing: write an OpenAI batch's output and error files from its items and results, streamed.

Output lines (in input order) are OpenAI's: ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error": null}``; a request answered with an error status goes to the error
file with its response, one that never got an answer (retries exhausted, expired) with
``"response": null, "error": {"code", "message"}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.batch.files import FileStore
from lmops.batch.tables import ITEMS, RESULTS

REQUEST_STEP = "request"
FLUSH_BYTES = 1 << 20


def batch_line(job_id: str, item_id: int, custom_id: str | None, response: Any, error: Any) -> bytes:
    return orjson.dumps({"id": f"batch_req_{job_id[-12:]}{item_id:012d}", "custom_id": custom_id,
                         "response": response, "error": error}) + b"\n"


class _Buffered:
    """Appends lines to a file with few, large writes done off the event loop."""

    def __init__(self, f: Any):
        self.f, self.size, self.lines = f, 0, 0
        self.parts: list[bytes] = []

    async def add(self, line: bytes) -> None:
        self.parts.append(line)
        self.size += len(line)
        self.lines += 1
        if self.size >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self.parts:
            data, self.parts, self.size = b"".join(self.parts), [], 0
            await asyncio.to_thread(self.f.write, data)


async def write_batch_files(db: AsyncEngine, files: FileStore, job: Any) -> tuple[str | None, str | None]:
    """Write the output and error files of an OpenAI batch; returns their file ids (None when empty)."""
    q = (select(ITEMS.c.id, ITEMS.c.custom_id, ITEMS.c.status, ITEMS.c.error, RESULTS.c.output)
         .select_from(ITEMS.outerjoin(RESULTS, and_(RESULTS.c.item_id == ITEMS.c.id,
                                                    RESULTS.c.step == REQUEST_STEP)))
         .where(ITEMS.c.job_id == job.id, ITEMS.c.status.in_(("done", "failed", "dead", "expired")))
         .order_by(ITEMS.c.seq))
    with files.writer() as (out_id, out_f), files.writer() as (err_id, err_f):
        out, err = _Buffered(out_f), _Buffered(err_f)
        async with db.connect() as conn:
            rows = await conn.stream(q.execution_options(yield_per=2000))
            async for item_id, custom_id, status, error, output in rows:
                response = orjson.loads(output) if output else None
                if status == "done":
                    await out.add(batch_line(job.id, item_id, custom_id, response, None))
                elif response is not None:
                    await err.add(batch_line(job.id, item_id, custom_id, response, None))
                else:
                    e = orjson.loads(error) if error else {"code": "failed", "message": "The request failed."}
                    await err.add(batch_line(job.id, item_id, custom_id, None,
                                             {"code": e.get("code"), "message": e.get("message")}))
        await out.flush()
        await err.flush()
    ids: list[str | None] = []
    for file_id, buf, name in ((out_id, out, "output"), (err_id, err, "errors")):
        if buf.lines:
            await files.record(file_id, job.team_id, "batch_output", f"{job.id}_{name}.jsonl")
            ids.append(file_id)
        else:
            (files.root / file_id).unlink(missing_ok=True)
            ids.append(None)
    return ids[0], ids[1]
