"""Queue semantics: retries with backoff, dead-lettering, lease expiry and reclaim, stale writers, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import httpx
import pytest

from batch_helpers import wait_for, worker_config
from lmops.app import create_app
from lmops.batch.catalogue import products
from lmops.batch.queue import Outcome
from lmops.services import Services


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request):
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_url")


def submit(api, n=5, workflow="keywords"):
    return httpx.post(f"{api.url}/v1/enrichment/jobs", json={"workflow": workflow, "records": list(products(n))}).json()


def job(api, job_id):
    return httpx.get(f"{api.url}/v1/enrichment/jobs/{job_id}").json()


def test_failures_retry_with_backoff_then_dead_letter(serve, batch_settings, fake, db_url):
    fake.engine.behaviour.fail = True
    api = serve(create_app(batch_settings(db_url, max_attempts=3)))
    j = submit(api, 4)
    j = wait_for(lambda: (x := job(api, j["id"]))["status"] == "completed" and x)
    assert (j["progress"]["done"], j["progress"]["failed"]) == (0, 4)
    entries = httpx.get(f"{api.url}/v1/enrichment/jobs/{j['id']}/results").json()["data"]
    assert {e["status"] for e in entries} == {"dead"}
    assert entries[0]["error"]["code"] == "bad_gateway"  # the engine's 500, retried each time
    # every try reached the engine (while the replica was ejected, calls waited instead of failing)
    assert fake.engine.requests == 4 * 3


def test_transient_failure_recovers(serve, batch_settings, fake):
    fake.engine.behaviour.fail = True
    api = serve(create_app(batch_settings(max_attempts=10, backoff_base=0.2)))
    j = submit(api, 3)
    wait_for(lambda: fake.engine.requests >= 3)
    fake.engine.behaviour.fail = False
    j = wait_for(lambda: (x := job(api, j["id"]))["status"] == "completed" and x)
    assert (j["progress"]["done"], j["progress"]["failed"]) == (3, 0)


async def test_expired_lease_is_reclaimed_and_stale_writer_writes_nothing(batch_settings, db_url):
    settings = batch_settings(db_url, lease_seconds=0.5, worker_in_process=False)
    svc = Services.build(settings)
    await svc.start()
    batch = svc.batch
    try:
        source = await batch.files.save_bytes("default", "enrichment", "r.jsonl", b'{"title": "a"}\n{"title": "b"}\n')
        row = await batch.jobs.create(team_id="default", kind="enrichment", workflow="keywords",
                                      input_file_id=source.id, params={"format": "jsonl"})
        assert await batch.upkeep("test")  # intake
        stale = await batch.queue.claim(10)  # a worker that will die holding these
        assert len(stale) == 2 and await batch.queue.claim(10) == []  # leased: nobody else gets them
        await asyncio.sleep(0.6)
        fresh = await batch.queue.claim(10)  # lease expired: reclaimed
        assert sorted(i.id for i in fresh) == sorted(i.id for i in stale) and fresh[0].attempts == 2
        result = {"item_id": stale[0].id, "step": "keywords", "job_id": row.id, "status": "ok", "output": '"late"',
                  "created_at": 0.0}
        assert await batch.queue.settle([Outcome(stale[0], "done", [result])]) == []  # lost its lease: no-op
        done = [Outcome(i, "done", [{**result, "item_id": i.id, "output": '"fresh"'}]) for i in fresh]
        progress = await batch.queue.settle(done)
        assert progress[0].completed == 2 and progress[0].status == "finalizing"
        assert await batch.queue.settle(done) == []  # a second ack of the same lease changes nothing
        page = await __import__("lmops.batch.results", fromlist=["page"]).page(svc.core.db, row.id)
        assert [e["outputs"]["keywords"] for e in page[0]] == ["fresh", "fresh"]
    finally:
        await svc.stop()


def test_cancel_enrichment_while_running(serve, batch_settings, fake):
    fake.engine.behaviour.delay = 0.2
    api = serve(create_app(batch_settings(concurrency=4)))
    j = submit(api, 300)
    wait_for(lambda: job(api, j["id"])["progress"]["done"] > 0)
    assert httpx.post(f"{api.url}/v1/enrichment/jobs/{j['id']}/cancel").json()["status"] == "cancelling"
    j = wait_for(lambda: (x := job(api, j["id"]))["status"] == "cancelled" and x)
    assert 0 < j["progress"]["done"] < 300


@pytest.mark.slow
def test_sigterm_finishes_or_releases_leases(tmp_path, fake, serve, pg_url):
    fake.engine.behaviour.delay = 0.3
    config = worker_config(tmp_path, pg_url, fake.url, {"data_dir": str(tmp_path), "lease_seconds": 60})
    from lmops.config import load_settings

    api = serve(create_app(load_settings(str(config))))
    j = submit(api, 2000)
    proc = subprocess.Popen([sys.executable, "-m", "lmops", "worker", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: job(api, j["id"])["progress"]["done"] > 0, timeout=60)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    import psycopg

    with psycopg.connect(pg_url) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM batch_items GROUP BY status").fetchall())
        finished = conn.execute("SELECT count(*) FROM batch_results WHERE step = 'brand_check'").fetchone()[0]
    assert "leased" not in statuses  # nothing is left waiting for a 60 s lease to expire
    assert statuses["done"] == finished and statuses["pending"] == 2000 - finished


async def test_concurrent_claimers_never_share_an_item(batch_settings, db_url):
    """Four queues (own connection pools, as separate processes would have) drain one job concurrently."""
    from lmops.batch.queue import Queue

    svc = Services.build(batch_settings(db_url, worker_in_process=False))
    await svc.start()
    batch = svc.batch
    queues = [Queue(svc.core.db, lease_seconds=60) for _ in range(4)]
    try:
        data = b"".join(b'{"title": "t%d"}\n' % i for i in range(500))
        source = await batch.files.save_bytes("default", "enrichment", "r.jsonl", data)
        await batch.jobs.create(team_id="default", kind="enrichment", workflow="keywords", input_file_id=source.id,
                                params={"format": "jsonl"})
        assert await batch.upkeep("test")

        async def drain(q: Queue) -> list[int]:
            got: list[int] = []
            while items := await q.claim(7):
                got.extend(i.id for i in items)
            return got

        claimed = await asyncio.gather(*(drain(q) for q in queues))
        everything = [i for c in claimed for i in c]
        assert len(everything) == len(set(everything)) == 500  # all claimed, none twice
    finally:
        for q in queues:
            await q.close()
        await svc.stop()
