"""Access control across capabilities: batch work billed to its team; authentication before model lookup."""

from __future__ import annotations

import time

import httpx

from lmops.batch.catalogue import products

from .helpers import ledger_rows

FAST = {"poll_seconds": 0.05, "ack_interval": 0.02, "heartbeat_seconds": 0.5, "lease_seconds": 5}


def test_enrichment_job_usage_lands_in_the_ledger_under_its_team(start_gateway, tmp_path):
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"
    gw = start_gateway(database_url=database_url, batch={"data_dir": str(tmp_path / "data"), "default_model": "fake", **FAST})
    team = gw.team()
    key, _ = gw.key(team["id"], scopes=["inference", "batch"])
    headers = {"authorization": f"Bearer {key}"}
    records = list(products(5, seed=3))
    job = httpx.post(f"{gw.url}/v1/enrichment/jobs", headers=headers, timeout=30,
                     json={"workflow": "keywords", "records": records}).json()
    assert "id" in job, job
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = httpx.get(f"{gw.url}/v1/enrichment/jobs/{job['id']}", headers=headers).json()
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert status["status"] == "completed", status
    rows = [r for r in ledger_rows(database_url, wait_for=5) if r["team_id"] == team["id"]]
    assert len(rows) >= 5
    assert all(r["model"] == "fake" and r["status"] == 200 for r in rows)
    assert all(r["prompt_tokens"] == 7 and r["completion_tokens"] == 10 for r in rows)
    assert all(r["cost_usd"] > 0 for r in rows)


def test_an_unknown_model_needs_a_key_first(start_gateway, tmp_path):
    """Without a valid key the caller learns nothing, not even which models exist."""
    gw = start_gateway(database_url=f"sqlite+aiosqlite:///{tmp_path / 'order.db'}")
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    anonymous = httpx.post(f"{gw.url}/v1/chat/completions", json=body)
    assert anonymous.status_code == 401
    known = httpx.post(f"{gw.url}/v1/chat/completions", json=body,
                       headers={"authorization": f"Bearer {gw.admin_key}"})
    assert known.status_code == 404 and known.json()["error"]["code"] == "model_not_found"
