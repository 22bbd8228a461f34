"""Intake resumes where a killed owner stopped: it never reads an input file from the top again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import func, select

from lmops.batch.intake import Progress
from lmops.batch.tables import ITEMS
from lmops.services import Services

CHUNK = 100
LEASE = 0.3


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request):
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_url")


class Killed(BaseException):
    """What a SIGKILL looks like from inside: nothing after it runs (not even ``except Exception``)."""


@pytest.fixture
async def svc(batch_settings, db_url):
    services = Services.build(batch_settings(db_url, lease_seconds=LEASE, intake_chunk=CHUNK,
                                             worker_in_process=False))
    await services.start()
    yield services
    await services.stop()


def _kill_after(svc: Services, chunks: int) -> list[int]:
    """Make the intake die after writing ``chunks`` chunks; returns the sizes of the chunks written."""
    jobs = svc.batch.jobs
    real = type(jobs).queue_items.__get__(jobs)  # the method itself, not an earlier wrapper
    written: list[int] = []

    async def queue_items(job_id: str, owner: str, insert: Any, rows: list[Any], intake: str) -> bool:
        if len(written) == chunks:
            raise Killed
        written.append(len(rows))
        return await real(job_id, owner, insert, rows, intake)

    jobs.queue_items = queue_items  # type: ignore[method-assign]
    return written


async def _crash_then_resume(svc: Services, kind: str, data: bytes, fmt: str = "jsonl",
                             kill_after: int = 2) -> tuple[Any, list[int], list[int]]:
    batch = svc.batch
    source = await batch.files.save_bytes("default", "batch" if kind == "batch" else "enrichment", f"in.{fmt}", data)
    job = await batch.jobs.create(team_id="default", kind=kind,
                                  workflow="openai-batch" if kind == "batch" else "keywords",
                                  input_file_id=source.id, params={"format": fmt},
                                  endpoint="/v1/chat/completions" if kind == "batch" else None)
    first = _kill_after(svc, kill_after)
    with pytest.raises(Killed):
        await batch.upkeep("first")
    saved = Progress.load((await batch.jobs.row(job.id)).intake)
    assert saved.items == sum(first)  # the progress was written with the items, in their transactions
    if kind == "batch":
        assert await batch.queue.claim(10) == []  # nothing of a batch runs before the whole file is checked
    await asyncio.sleep(LEASE + 0.05)  # the dead owner's lease expires
    second = _kill_after(svc, 10_000)
    assert await batch.upkeep("second")
    return await batch.jobs.row(job.id), first, second


async def _items(svc: Services, job_id: str) -> list[Any]:
    async with svc.core.db.connect() as conn:
        return list(await conn.execute(select(ITEMS.c.seq, ITEMS.c.status, ITEMS.c.custom_id)
                                       .where(ITEMS.c.job_id == job_id).order_by(ITEMS.c.seq)))


def _batch_line(i: int, custom_id: str | None = None) -> bytes:
    body = {"model": "fake", "messages": [{"role": "user", "content": f"hi {i}"}]}
    return json.dumps({"custom_id": custom_id or f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": body}).encode() + b"\n"


async def test_enrichment_jsonl_resumes_at_the_saved_offset(svc):
    data = b"".join(b'{"id": %d, "title": "t%d"}\n' % (i, i) for i in range(250))
    job, first, second = await _crash_then_resume(svc, "enrichment", b"\xef\xbb\xbf" + data + b"\n\n")
    assert first == [CHUNK, CHUNK] and second == [50]  # the new owner read the last 50 lines only
    assert job.status == "in_progress" and job.total == 250
    items = await _items(svc, job.id)
    assert [i.seq for i in items] == list(range(1, 251)) and [i.custom_id for i in items[:2]] == ["0", "1"]


async def test_enrichment_csv_resumes_after_the_saved_record_count(svc):
    data = b"id,title\n" + b"".join(b'%d,"multi\nline %d"\n' % (i, i) for i in range(230))  # records span lines
    job, first, second = await _crash_then_resume(svc, "enrichment", data, fmt="csv")
    assert first == [CHUNK, CHUNK] and second == [30]
    items = await _items(svc, job.id)
    assert len(items) == 230 == job.total and items[-1].custom_id == "229" and items[-1].seq == 2 + 229 * 2


async def test_a_batch_resumes_checking_and_runs_only_once_whole(svc):
    job, first, second = await _crash_then_resume(svc, "batch", b"".join(_batch_line(i) for i in range(250)))
    assert second == [50] and job.status == "in_progress" and job.total == 250
    items = await _items(svc, job.id)
    assert len(items) == 250 and {i.status for i in items} == {"pending"}


async def test_a_resumed_batch_still_finds_duplicates_of_lines_checked_before(svc):
    lines = [_batch_line(i) for i in range(250)]
    lines[239] = _batch_line(239, custom_id="r10")  # line 240 repeats line 11's custom_id
    job, _, _ = await _crash_then_resume(svc, "batch", b"".join(lines))
    assert job.status == "failed"
    errors = json.loads(job.errors)["data"]
    assert [(e["code"], e["line"]) for e in errors] == [("duplicate_custom_id", 240)]
    async with svc.core.db.connect() as conn:  # the items staged while checking are gone
        assert (await conn.execute(select(func.count()).where(ITEMS.c.job_id == job.id))).scalar() == 0
