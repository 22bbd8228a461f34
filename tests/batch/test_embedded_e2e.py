"""End to end with the embedded SmolLM2: real outputs, JSON-schema validation, lineage, replay."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import httpx
import jsonschema
import pytest
import yaml

from batch_helpers import FAST_BATCH, wait_for
from lmops.app import create_app
from lmops.batch.catalogue import products
from lmops.batch.workflows.examples import ATTRIBUTES_SCHEMA
from lmops.services import Services


@pytest.fixture
def embedded_services(settings_factory, tmp_path):
    settings = settings_factory([{"name": "smollm2", "engine": "embedded", "context_length": 1024, "threads": 1}],
                                batch={**FAST_BATCH, "data_dir": str(tmp_path / "data"),
                                       "model_concurrency": {"smollm2": 2}})
    return Services.build(settings)


def test_attribute_labelling_with_the_embedded_model(serve, embedded_services, tmp_path):
    api = serve(create_app(services=embedded_services))
    records = list(products(3, seed=4))
    job = httpx.post(f"{api.url}/v1/enrichment/jobs", json={"workflow": "attributes", "records": records,
                                                            "params": {"seed": 11}}).json()
    job = wait_for(lambda: (j := httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}").json())["status"]
                   == "completed" and j, timeout=120)
    assert job["progress"]["done"] == 3, job
    assert job["usage"]["output_tokens"] > 0
    entries = httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results").json()["data"]
    for e in entries:
        jsonschema.validate(e["outputs"]["attributes"], ATTRIBUTES_SCHEMA)  # a real, schema-valid answer

    db = embedded_services.settings.database_url.split("///", 1)[1]
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM batch_results WHERE item_id = ? AND step = 'attributes'",
                           (entries[0]["item_id"],)).fetchone()
    assert row["model"] == "smollm2" and row["prompt_version"] == "attributes-v1"
    assert records[0]["title"] in row["prompt"] and row["completion_tokens"] > 0 and row["latency_ms"] > 0
    assert json.loads(row["params"])["temperature"] == 0 and "response_format" in json.loads(row["params"])
    assert json.loads(row["inputs"])["record"] == records[0]
    body = json.loads(row["request"])["body"]  # the exact request, what replay sends again
    assert body["model"] == "smollm2" and body["seed"] == 11 and body["temperature"] == 0 and body["max_tokens"] == 64
    assert body["messages"][0]["role"] == "system" and records[0]["title"] in body["messages"][1]["content"]
    assert body["response_format"]["json_schema"]["schema"] == ATTRIBUTES_SCHEMA
    config = tmp_path / "lmops.yaml"
    config.write_text(yaml.safe_dump(embedded_services.settings.model_dump(mode="json", exclude={"config"})))
    out = subprocess.run([sys.executable, "-m", "lmops", "replay", str(entries[0]["item_id"]), "attributes",
                          "-c", str(config)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "replayed as recorded" in out.stdout and "attributes-v1" in out.stdout
    assert "same output as recorded" in out.stdout  # seed and temperature 0: the replay reproduces the output
