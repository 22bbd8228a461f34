"""Access control across capabilities: batch work billed to its team; authentication before model lookup."""

from __future__ import annotations

import time

import httpx

from lmops.batch.catalogue import products

from .helpers import ledger_rows

FAST = {"poll_seconds": 0.05, "ack_interval": 0.02, "heartbeat_seconds": 0.5, "lease_seconds": 5}


def finished_job(gw, job_id: str, headers: dict[str, str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{gw.url}/v1/enrichment/jobs/{job_id}", headers=headers).json()
        if status["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_enrichment_job_usage_lands_in_the_ledger_under_its_team(start_gateway, tmp_path):
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"
    gw = start_gateway(database_url=database_url,
                       batch={"data_dir": str(tmp_path / "data"), "default_model": "fake", **FAST})
    team = gw.team()
    key, _ = gw.key(team["id"], scopes=["inference", "batch"])
    headers = {"authorization": f"Bearer {key}"}
    records = list(products(5, seed=3))
    job = httpx.post(f"{gw.url}/v1/enrichment/jobs", headers=headers, timeout=30,
                     json={"workflow": "keywords", "records": records}).json()
    assert "id" in job, job
    status = finished_job(gw, job["id"], headers)
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


def test_batch_work_respects_the_team_budget(start_gateway, tmp_path):
    """Batch calls reserve and settle against the team's budget like interactive ones: no bypass."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'budget.db'}"
    gw = start_gateway(database_url=database_url, batch={"data_dir": str(tmp_path / "data"), "default_model": "fake",
                                                         "max_attempts": 1, **FAST})
    # fake costs $0.001/input and $0.002/output token: 7 + 10 tokens = $0.027 a call. The worst case
    # reserved per call is about $0.5 (a few hundred prompt bytes + max_tokens 48), so a $0.7 budget admits
    # calls while less than ~$0.2 is spent, then refuses the rest.
    team = gw.team(budget_usd=0.7, budget_period="total")
    key, _ = gw.key(team["id"], scopes=["inference", "batch"])
    headers = {"authorization": f"Bearer {key}"}
    job = httpx.post(f"{gw.url}/v1/enrichment/jobs", headers=headers, timeout=30,
                     json={"workflow": "keywords", "records": list(products(30, seed=4))}).json()
    status = finished_job(gw, job["id"], headers)
    progress = status["progress"]
    assert progress["failed"] > 0, status
    rows = [r for r in ledger_rows(database_url, wait_for=30) if r["team_id"] == team["id"]]
    spent = sum(r["cost_usd"] for r in rows)
    assert 0 < spent <= 0.7
    assert any(r["status"] == 429 for r in rows)
    assert progress["done"] >= 3 and progress["done"] + progress["failed"] == 30
