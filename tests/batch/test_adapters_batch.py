"""Batch work addresses LoRA adapters as "<model>:<adapter>", through the same router as the gateway."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest
from batch_helpers import FAST_BATCH, wait_for

from lmops.app import create_app
from lmops.batch.catalogue import products
from lmops.batch.workflows import LLMStep, Prompt, Workflow
from lmops.services import Services
from lmops.testing.fake_openai import Behaviour, FakeOpenAI


@pytest.fixture
def served(serve, settings_factory, tmp_path):
    fake = FakeOpenAI(Behaviour(served=("base-up", "sql-up")))  # anything else is vLLM's 404
    up = serve(fake)
    settings = settings_factory(
        [{"name": "fake", "engine": "openai", "upstream_model": "base-up", "replicas": [f"{up.url}/v1"],
          "adapters": [{"name": "sql", "upstream_model": "sql-up"}]}],
        batch={"data_dir": str(tmp_path / "data"), **FAST_BATCH})
    services = Services.build(settings)
    srv = serve(create_app(services=services))
    srv.fake, srv.services = fake, services
    srv.client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    return srv


def line(i: int, model: str) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 5}}


def run_batch(client: openai.OpenAI, lines: list[dict]):
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    return wait_for(lambda: (x := client.batches.retrieve(b.id)).status in ("completed", "failed") and x)


def test_openai_batch_lines_may_name_an_adapter(served):
    b = run_batch(served.client, [line(0, "fake:sql"), line(1, "fake"), line(2, "fake:sql")])
    assert b.status == "completed" and b.request_counts.completed == 3, b
    out = [json.loads(x) for x in served.client.files.content(b.output_file_id).text.splitlines()]
    assert [o["response"]["body"]["model"] for o in out] == ["fake:sql", "fake", "fake:sql"]
    assert served.fake.models_seen == {"sql-up": 2, "base-up": 1}


def test_an_unknown_adapter_fails_the_batch_at_intake(served):
    b = run_batch(served.client, [line(0, "fake:sql"), line(1, "fake:nope")])
    assert b.status == "failed"
    (error,) = b.errors.data
    assert (error.line, error.code, error.param) == (2, "model_not_found", "body.model")
    assert served.fake.models_seen == {}


def test_llm_step_with_an_adapter_calls_model_colon_adapter(served):
    served.services.batch.registry.register(Workflow("sql-titles", (
        LLMStep("title", prompt=Prompt("t1", "Title for {{ record.title }}"), model="fake", adapter="sql",
                params={"max_tokens": 8}),)))
    job = httpx.post(f"{served.url}/v1/enrichment/jobs",
                     json={"workflow": "sql-titles", "records": list(products(3))}).json()
    job = wait_for(lambda: (j := httpx.get(f"{served.url}/v1/enrichment/jobs/{job['id']}").json())
                   ["status"] in ("completed", "failed") and j)
    assert job["status"] == "completed" and job["progress"]["done"] == 3, job
    assert served.fake.models_seen == {"sql-up": 3}
