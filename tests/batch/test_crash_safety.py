"""Crash safety: `lmops worker` processes killed with SIGKILL every second, on PostgreSQL and on SQLite.

Nothing is lost, duplicated or dead-lettered (the upstream is healthy), every delivered request is billed
exactly once to the batch's team (the team's ledger rows are the output files' request ids, one each), and
the kill loop slows the batch down without stalling it: it finishes within 3x the time of the same batch
undisturbed.
"""

from __future__ import annotations

import io
import json
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import psycopg
import pytest

from batch_helpers import wait_for, worker_config
from lmops.app import create_app
from lmops.config import load_settings

pytestmark = [pytest.mark.slow]
ITEMS = 800
WARMUP = 30
WORKERS = 3


@pytest.fixture(params=["postgres", "sqlite"])
def database(request, tmp_path) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path}/lmops.db"


def query(database: str, sql: str) -> list[Any]:
    if database.startswith("sqlite"):
        with sqlite3.connect(database.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(database) as pg:
        return pg.execute(sql).fetchall()


class Workers:
    def __init__(self, config: str, log: str):
        self.config, self.log = config, log
        self.procs = [self._start() for _ in range(WORKERS)]
        self.kills = 0

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "lmops", "worker", "-c", self.config],
                                stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def kill_one(self) -> None:
        slot = self.kills % WORKERS
        self.procs[slot].send_signal(signal.SIGKILL)
        self.procs[slot].wait()
        self.procs[slot] = self._start()  # a fresh worker takes the victim's place
        self.kills += 1

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def submit(client: openai.OpenAI, tag: str, n: int = ITEMS) -> str:
    data = b"".join(json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "fake", "messages": [{"role": "user", "content": f"{tag} {i}"}]}}
                               ).encode() + b"\n" for i in range(n))
    f = client.files.create(file=(f"{tag}.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def finished(client: openai.OpenAI, batch_id: str) -> Any:
    batch = client.batches.retrieve(batch_id)
    return batch if batch.status in ("completed", "failed", "expired", "cancelled") else None


def output(client: openai.OpenAI, batch: Any, tag: str) -> list[str]:
    """The output file's request ids, after checking it holds every line once, answered."""
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (ITEMS, 0), batch.request_counts
    assert batch.error_file_id is None  # nothing failed or dead-lettered: the upstream is healthy
    lines = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in lines] == [f"{tag}-{i}" for i in range(ITEMS)]
    assert {o["response"]["status_code"] for o in lines} == {200}
    return [o["response"]["request_id"] for o in lines]


def team_key(url: str, admin_key: str) -> tuple[str, str]:
    admin = {"authorization": f"Bearer {admin_key}"}
    team = httpx.post(f"{url}/admin/teams", json={"name": "catalogue"}, headers=admin).json()["id"]
    key = httpx.post(f"{url}/admin/keys", json={"team": team, "scopes": ["inference", "batch"]}, headers=admin)
    return team, key.json()["key"]


def test_sigkilled_workers_lose_duplicate_and_overbill_nothing(tmp_path, database, fake, serve, monkeypatch):
    admin_key = f"lmops-{secrets.token_hex(4)}-{secrets.token_urlsafe(24)}"
    monkeypatch.setenv("LMOPS_ADMIN_KEY", admin_key)  # the workers (subprocesses) inherit both
    monkeypatch.setenv("LMOPS_SECRET", secrets.token_hex(32))
    config = worker_config(tmp_path, database, fake.url,
                           {"data_dir": str(tmp_path / "data"), "lease_seconds": 2, "heartbeat_seconds": 0.5,
                            "concurrency": 8, "max_items_in_flight": 16, "claim_batch": 8},
                           health={"interval": 0.5, "timeout": 2.0, "failure_threshold": 3},
                           access={"enabled": True, "redis_prefix": f"t{secrets.token_hex(4)}",
                                   "prices": {"fake": {"input": 1.0, "output": 2.0}}})
    subprocess.run([sys.executable, "-m", "lmops", "db", "upgrade", "-c", str(config)], check=True,
                   capture_output=True)
    # The engine sets the pace, as in production: 8 requests at a time, 0.1 s each (80 lines/s), with room in
    # the workers for more (3 x 8 in flight). What is measured is what the kills cost the pipeline, not how
    # long this 2-core machine takes to start Python processes (about a CPU second each).
    fake.engine.behaviour.delay = 0.1
    fake.engine.behaviour.slots = 8
    api = serve(create_app(load_settings(str(config)), migrate=False))
    team, key = team_key(api.url, admin_key)
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    workers = Workers(str(config), str(tmp_path / "workers.log"))
    try:
        warmup_id = submit(client, "warmup", WARMUP)
        wait_for(lambda: finished(client, warmup_id), timeout=120)  # the workers are up and warm
        start = time.monotonic()
        calm_id = submit(client, "calm")
        calm = wait_for(lambda: finished(client, calm_id), timeout=120)
        undisturbed = time.monotonic() - start
        start = time.monotonic()
        batch_id = submit(client, "killed")
        while (killed := finished(client, batch_id)) is None:
            assert time.monotonic() - start < 3 * undisturbed, (
                f"a 1 s kill loop took over 3x the undisturbed {undisturbed:.1f} s; "
                f"{client.batches.retrieve(batch_id).request_counts}")
            time.sleep(1.0)
            workers.kill_one()
    finally:
        workers.stop()
    assert workers.kills >= 3, f"the batch finished before the workers could be killed ({undisturbed:.1f} s calm)"
    delivered = output(client, calm, "calm") + output(client, killed, "killed")
    assert len(set(delivered)) == len(delivered)
    ledger = [r[0] for r in query(database, f"SELECT request_id FROM request_records WHERE team_id = '{team}'")]
    warmup = WARMUP  # the warm-up batch ran undisturbed: billed once per line as well
    assert len(ledger) == len(delivered) + warmup and set(delivered) <= set(ledger)
    assert len(set(ledger)) == len(ledger)  # no call billed twice
    statuses = dict(query(database, "SELECT status, count(*) FROM batch_items GROUP BY status"))
    assert statuses == {"done": 2 * ITEMS + WARMUP}
    lost = query(database, "SELECT count(*) FROM batch_items WHERE lease_losses > 0")[0][0]
    assert lost > 0, "no lease was ever lost: the kills did not hit in-flight items"
