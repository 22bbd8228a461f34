"""The batch CLI against a running lmops, the scaling signals on /metrics, and batch expiry."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import httpx

from batch_helpers import wait_for
from lmops.app import create_app
from lmops.batch.catalogue import batch_lines, products
from lmops.services import Services


def lmops(*args: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmops", *args, "--url", url], capture_output=True, text=True,
                          timeout=120)


def test_batch_cli_submit_status_results(lmops_server, tmp_path):
    srv = lmops_server()
    records = tmp_path / "catalogue.jsonl"
    records.write_text("".join(json.dumps(p) + "\n" for p in products(12)))
    out = lmops("batch", "submit", str(records), "--workflow", "keywords", "-p", "seed=3", url=srv.url)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert "completed, 12 done, 0 failed" in out.stderr
    status = json.loads(lmops("batch", "status", job_id, url=srv.url).stdout)
    assert status["progress"]["done"] == 12 and status["params"]["seed"] == 3
    csv_out = lmops("batch", "results", job_id, "--format", "csv", url=srv.url).stdout.splitlines()
    assert csv_out[0] == "line,id,status,error,keywords,brand_check" and len(csv_out) == 13
    bad = lmops("batch", "submit", str(records), "--workflow", "nope", url=srv.url)
    assert bad.returncode == 1 and "Unknown workflow 'nope'" in bad.stderr

    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in batch_lines(5, "fake")))
    out = lmops("batch", "openai", "submit", str(requests), url=srv.url)
    assert out.returncode == 0, out.stderr
    batch_id = out.stdout.strip()
    lines = lmops("batch", "openai", "results", batch_id, url=srv.url).stdout.splitlines()
    assert [json.loads(x)["custom_id"] for x in lines] == [p["sku"] for p in products(5)]


def test_metrics_show_queue_depth_and_step_latency(lmops_server, fake):
    fake.engine.behaviour.delay = 0.05
    srv = lmops_server(concurrency=2)
    job = httpx.post(f"{srv.url}/v1/enrichment/jobs", json={"workflow": "keywords",
                                                           "records": list(products(60))}).json()

    def depth() -> str | None:
        text = httpx.get(f"{srv.url}/metrics").text
        return text if 'lmops_batch_queue_depth{status="leased",team="default",workflow="keywords"}' in text \
            else None  # the worker leases up to max_items_in_flight at once

    text = wait_for(depth)
    assert 'lmops_batch_oldest_pending_age_seconds{team="default",workflow="keywords"}' in text
    wait_for(lambda: httpx.get(f"{srv.url}/v1/enrichment/jobs/{job['id']}").json()["status"] == "completed")
    text = httpx.get(f"{srv.url}/metrics").text
    assert 'lmops_batch_items_total{status="done",team="default",workflow="keywords"} 60.0' in text
    assert 'lmops_batch_step_latency_seconds_count{step="keywords",workflow="keywords"} 60.0' in text
    assert 'lmops_requests_total{endpoint="batch.chat.completions",model="fake",status="200"} 60.0' in text


def test_batch_past_its_window_expires(batch_settings, serve, fake):
    import openai

    fake.engine.behaviour.delay = 3
    svc = Services.build(batch_settings(concurrency=1))
    srv = serve(create_app(services=svc))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="-", max_retries=0)
    data = "".join(json.dumps(line) + "\n" for line in batch_lines(3, "fake")).encode()
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: client.batches.retrieve(b.id).status == "in_progress")
    with sqlite3.connect(svc.settings.database_url.split("///", 1)[1]) as conn:  # the window is over
        conn.execute("UPDATE batch_jobs SET expires_at = ? WHERE id = ?", (int(time.time()) - 1, b.id))
    b = wait_for(lambda: (x := client.batches.retrieve(b.id)).status == "expired" and x)
    assert b.expired_at and b.request_counts.failed == 3 and b.output_file_id is None
    errors = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
    assert [e["error"]["code"] for e in errors] == ["batch_expired"] * 3 and errors[0]["response"] is None
