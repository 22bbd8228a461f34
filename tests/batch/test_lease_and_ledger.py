"""Lost leases are not failed tries, and batch calls are billed in the transaction that settles their item."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from lmops.batch.catalogue import products
from lmops.batch.queue import Outcome
from lmops.batch.tables import ITEMS
from lmops.services import Services
from lmops.usage.records import RECORDS


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request):
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_url")


async def _job(svc: Services, n: int, workflow: str = "keywords") -> Any:
    batch = svc.batch
    data = b"".join(orjson.dumps(record) + b"\n" for record in products(n))
    source = await batch.files.save_bytes("default", "enrichment", "r.jsonl", data)
    job = await batch.jobs.create(team_id="default", kind="enrichment", workflow=workflow,
                                  input_file_id=source.id, params={"format": "jsonl"})
    assert await batch.upkeep("test")  # intake
    return job


async def _until_finished(svc: Services, job_id: str, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await svc.batch.jobs.row(job_id)
        if row.status == "completed":
            return row
        assert asyncio.get_running_loop().time() < deadline, f"job still {row.status}"
        await asyncio.sleep(0.05)


async def _records(svc: Services) -> list[Any]:
    """The request records of batch calls (billed ones too: the ledger is these rows with a team)."""
    async with svc.core.db.connect() as conn:
        return list(await conn.execute(select(RECORDS).where(RECORDS.c.endpoint.like("batch.%"))))


async def _lose_leases(svc: Services, times: int, lease: float) -> None:
    """Workers that claim every item and die holding it, ``times`` over."""
    for _ in range(times):
        assert await svc.batch.queue.claim(100)
        await asyncio.sleep(lease + 0.05)


async def test_lost_leases_do_not_use_up_tries(batch_settings, db_url):
    lease = 0.3
    svc = Services.build(batch_settings(db_url, lease_seconds=lease, heartbeat_seconds=0.1, max_attempts=1,
                                        worker_in_process=False))
    await svc.start()
    try:
        job = await _job(svc, 3)
        await _lose_leases(svc, 3, lease)  # on a single-try budget
        svc.batch.start_worker()
        row = await _until_finished(svc, job.id)
        assert (row.completed, row.failed) == (3, 0)  # nothing dead-lettered: the upstream is healthy
        async with svc.core.db.connect() as conn:
            items = (await conn.execute(select(func.min(ITEMS.c.lease_losses),
                                               func.max(ITEMS.c.attempts)))).one()
        assert tuple(items) == (3, 4)  # three lost leases, four claims, one try counted
    finally:
        await svc.stop()


async def test_an_item_that_kills_every_worker_is_dead_lettered(batch_settings, db_url):
    lease = 0.3
    svc = Services.build(batch_settings(db_url, lease_seconds=lease, heartbeat_seconds=0.1, max_lease_losses=2,
                                        worker_in_process=False))
    await svc.start()
    try:
        job = await _job(svc, 2)
        await _lose_leases(svc, 3, lease)
        svc.batch.start_worker()
        row = await _until_finished(svc, job.id)
        assert (row.completed, row.failed) == (0, 2)
        page = await __import__("lmops.batch.results", fromlist=["page"]).page(svc.core.db, job.id)
        assert {e["status"] for e in page[0]} == {"dead"}
        assert page[0][0]["error"]["code"] == "lease_expired" and "3 times" in page[0][0]["error"]["message"]
    finally:
        await svc.stop()


async def test_batch_calls_are_billed_with_their_results_not_through_the_writer(batch_settings, db_url, fake):
    svc = Services.build(batch_settings(db_url, worker_in_process=False))
    await svc.start()
    try:
        job = await _job(svc, 5, workflow="copywriting")  # several levels: checkpoints bill their steps
        svc.batch.start_worker()
        await _until_finished(svc, job.id)
        records = await _records(svc)
        assert len(records) == fake.engine.requests > 5 and {r.status for r in records} == {200}
        assert len({r.request_id for r in records}) == len(records)
        assert svc.core.records.written == 0  # none went through the batched writer
    finally:
        await svc.stop()


def _record(request_id: str) -> dict[str, Any]:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    return {"id": request_id, "request_id": request_id, "created_at": now, "endpoint": "batch.chat.completions",
            "model": "fake", "adapter": None, "replica": None, "stream": False, "prompt_tokens": 3,
            "completion_tokens": 4, "latency_ms": 1.0, "ttft_ms": None, "status": 200, "error": None,
            "team_id": "default", "user_id": None, "key_id": None, "cost_usd": 0.0, "day": now.date()}


async def test_a_stale_writer_bills_nothing_and_a_retry_bills_its_calls(batch_settings, db_url):
    lease = 0.3
    svc = Services.build(batch_settings(db_url, lease_seconds=lease, worker_in_process=False))
    await svc.start()
    queue = svc.batch.queue
    try:
        await _job(svc, 2)
        stale = await queue.claim(10)
        await asyncio.sleep(lease + 0.05)
        fresh = await queue.claim(10)
        assert [i.lease_losses for i in fresh] == [1, 1]
        assert await queue.settle([Outcome(stale[0], "done", records=[_record("stale")])]) == []
        await queue.settle([Outcome(fresh[0], "retry", error={"code": "x", "message": "y"}, retry_at=0.0,
                                    records=[_record("retried")]),
                            Outcome(fresh[1], "failed", error={"code": "x", "message": "y"},
                                    records=[_record("failed")])])
        assert sorted(r.request_id for r in await _records(svc)) == ["failed", "retried"]
    finally:
        await svc.stop()


async def test_batch_calls_bill_no_more_than_max_tokens_allows(batch_settings, fake):
    """An engine reporting more completion tokens than the request allowed is billed the most it could use."""
    fake.engine.behaviour.usage = {"prompt_tokens": 7, "completion_tokens": 5000, "total_tokens": 5007}
    svc = Services.build(batch_settings())
    await svc.start()
    try:
        batch = svc.batch
        lines = b"".join(orjson.dumps({"custom_id": f"r{i}", "url": "/v1/completions", "method": "POST",
                                       "body": {"model": "fake", "prompt": ["a", "b"], "n": 2, "max_tokens": 16}})
                         + b"\n" for i in range(2))
        source = await batch.files.save_bytes("default", "batch", "in.jsonl", lines)
        job = await batch.jobs.create(team_id="default", kind="batch", workflow="openai-batch",
                                      input_file_id=source.id, endpoint="/v1/completions")
        await _until_finished(svc, job.id)
        assert [(r.prompt_tokens, r.completion_tokens) for r in await _records(svc)] == [(7, 16 * 2 * 2)] * 2
        metric = svc.core.metrics.usage_implausible.labels("fake", f"{fake.url}/v1", "over_max_tokens")
        assert metric._value.get() == 2
    finally:
        await svc.stop()
