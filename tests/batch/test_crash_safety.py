"""Crash safety on real PostgreSQL: `lmops worker` processes killed with SIGKILL mid-run lose and duplicate nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from batch_helpers import wait_for, worker_config
from lmops.app import create_app
from lmops.batch.catalogue import products

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
ITEMS = 2000


def worker(config: str, log: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmops", "worker", "-c", config],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def test_sigkilled_workers_lose_and_duplicate_nothing(tmp_path, pg_url, fake, serve):
    config = worker_config(tmp_path, pg_url, fake.url,
                           {"data_dir": str(tmp_path / "data"), "lease_seconds": 2, "heartbeat_seconds": 0.5,
                            "concurrency": 16, "max_items_in_flight": 64, "claim_batch": 32},
                           health={"interval": 0.5, "timeout": 2.0, "failure_threshold": 3})
    subprocess.run([sys.executable, "-m", "lmops", "db", "upgrade", "-c", str(config)], check=True,
                   capture_output=True)
    fake.engine.behaviour.delay = 0.01  # keep items in flight when the kills land
    from lmops.config import load_settings

    api = serve(create_app(load_settings(str(config)), migrate=False))
    job = httpx.post(f"{api.url}/v1/enrichment/jobs",
                     json={"workflow": "keywords", "records": list(products(ITEMS, seed=1))}).json()
    log = str(tmp_path / "workers.log")
    procs = [worker(str(config), log) for _ in range(3)]
    kills = 0
    try:
        def progress() -> dict:
            return httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}").json()

        wait_for(lambda: progress()["progress"]["done"] > 100, timeout=60)
        while progress()["status"] not in ("completed", "failed") and kills < 6:
            slot = kills % 3
            procs[slot].send_signal(signal.SIGKILL)
            procs[slot].wait()
            procs[slot] = worker(str(config), log)  # a fresh worker takes the victim's place
            kills += 1
            time.sleep(1.0)
        done = wait_for(lambda: (j := progress())["status"] in ("completed", "failed") and j, timeout=120)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert kills >= 3, "the job finished before the workers could be killed"
    assert done["status"] == "completed", done
    assert done["progress"]["done"] == ITEMS and done["progress"]["failed"] == 0  # counted exactly once
    with psycopg.connect(pg_url) as conn:
        per_item = conn.execute("SELECT item_id, count(*) FROM batch_results GROUP BY item_id").fetchall()
        statuses = dict(conn.execute("SELECT status, count(*) FROM batch_items GROUP BY status").fetchall())
        steps = conn.execute("SELECT count(DISTINCT step) FROM batch_results").fetchone()[0]
        reclaimed = conn.execute("SELECT count(*) FROM batch_items WHERE attempts > 1").fetchone()[0]
    assert statuses == {"done": ITEMS}
    assert len(per_item) == ITEMS and {n for _, n in per_item} == {2} and steps == 2  # one result per step
    assert reclaimed > 0, "no lease was ever reclaimed: the kills did not hit in-flight items"
