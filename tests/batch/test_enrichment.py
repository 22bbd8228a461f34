"""Enrichment jobs over HTTP with a fast fake engine: workflows, bad input, results, tenants, guardrails."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

from lmops.app import create_app
from lmops.batch.catalogue import products
from lmops.batch.workflows import GuardrailStep, LLMStep, Prompt, PythonStep, Workflow
from lmops.serving.context import Principal
from lmops.services import Services


class HeaderGuard:
    """Team from the ``x-team`` header: enough to check that every object is scoped by team."""

    async def authenticate(self, request, scope):
        return Principal(team_id=request.headers.get("x-team", "default"))

    async def admit(self, request, ctx):
        ctx.principal = await self.authenticate(request, "inference")

    async def admit_work(self, ctx, body_bytes):
        return None

    def settle(self, ctx):
        return None


@pytest.fixture
def app_services(batch_settings):
    return Services.build(batch_settings(), guard=HeaderGuard())


@pytest.fixture
def api(serve, app_services):
    return serve(create_app(services=app_services))


def finished(wait, api, job_id, headers=None):
    return wait(lambda: (j := httpx.get(f"{api.url}/v1/enrichment/jobs/{job_id}", headers=headers).json())
                ["status"] in ("completed", "failed", "cancelled") and j)


def test_json_records_run_the_keywords_workflow(api, wait):
    records = list(products(30))
    job = httpx.post(f"{api.url}/v1/enrichment/jobs", json={"workflow": "keywords", "records": records}).json()
    assert job["status"] == "validating" and job["object"] == "enrichment.job"
    job = finished(wait, api, job["id"])
    assert job["status"] == "completed"
    p = job["progress"]
    assert (p["total"], p["done"], p["failed"], p["pending"]) == (30, 30, 0, 0) and p["eta_seconds"] == 0
    page = httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results", params={"limit": 20}).json()
    assert len(page["data"]) == 20 and page["has_more"]
    first = page["data"][0]
    assert first["line"] == 1 and first["id"] == records[0]["sku"] and first["status"] == "completed"
    assert first["outputs"]["keywords"] == ["the quick brown fox jumps over the lazy dog."]
    assert first["outputs"]["brand_check"]["passed"] is True
    rest = httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results",
                     params={"after": page["last_line"], "limit": 20}).json()
    assert [e["line"] for e in rest["data"]] == list(range(21, 31)) and not rest["has_more"]
    lines = httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results", params={"format": "jsonl"}).text
    assert len(lines.splitlines()) == 30
    table = list(csv.DictReader(io.StringIO(
        httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results", params={"format": "csv"}).text)))
    assert len(table) == 30 and table[0]["keywords"] == "the quick brown fox jumps over the lazy dog."
    assert job["usage"]["output_tokens"] == 300


def test_bad_lines_fail_alone_with_line_numbers(api, wait):
    good = [json.dumps(r) for r in products(3)]
    body = "\n".join([good[0], "{broken", good[1], "[1, 2]", good[2]]).encode()
    job = httpx.post(f"{api.url}/v1/enrichment/jobs", data={"workflow": "copywriting"},
                     files={"file": ("records.jsonl", body)}).json()
    job = finished(wait, api, job["id"])
    assert job["status"] == "completed"
    assert (job["progress"]["done"], job["progress"]["failed"]) == (3, 2)
    assert [(e["line"], e["code"]) for e in job["errors"]["data"]] == [(2, "invalid_json_line"),
                                                                         (4, "invalid_record")]
    entries = httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results").json()["data"]
    assert entries[1]["status"] == "failed" and entries[1]["error"]["message"].startswith("Line 2:")
    assert entries[0]["outputs"]["title"] and entries[0]["outputs"]["description"]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["utf-8", "excel-bom"])
def test_csv_upload(api, wait, bom):
    rows = list(products(5))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    job = httpx.post(f"{api.url}/v1/enrichment/jobs", data={"workflow": "keywords", "id_field": "sku"},
                     files={"file": ("catalogue.csv", bom + buf.getvalue().encode())}).json()
    job = finished(wait, api, job["id"])
    assert job["progress"]["done"] == 5
    entries = httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results").json()["data"]
    assert [e["id"] for e in entries] == [r["sku"] for r in rows] and entries[0]["line"] == 2


def test_unknown_workflow_and_bad_requests_are_400(api):
    r = httpx.post(f"{api.url}/v1/enrichment/jobs", json={"workflow": "nope", "records": [{"a": 1}]})
    assert r.status_code == 400 and "available: attributes, catalogue, copywriting, keywords" in \
        r.json()["error"]["message"]
    r = httpx.post(f"{api.url}/v1/enrichment/jobs", json={"workflow": "keywords", "records": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "records"
    r = httpx.post(f"{api.url}/v1/enrichment/jobs",
                   json={"workflow": "keywords", "records": [{"a": 1}], "params": {"model": "fakee"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "params.model"
    assert "'fakee'" in r.json()["error"]["message"] and "fake" in r.json()["error"]["message"]
    upload = httpx.post(f"{api.url}/v1/enrichment/jobs", files={"file": ("r.jsonl", b'{"a": 1}\n')},
                        data={"workflow": "keywords", "params": '{"model": 3}'})
    assert upload.status_code == 400 and upload.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{api.url}/v1/files").json()["data"] == []  # the refused upload's file is gone too
    names = [w["name"] for w in httpx.get(f"{api.url}/v1/enrichment/workflows").json()["data"]]
    assert "copywriting" in names


def test_objects_are_scoped_by_team(api, wait):
    a = {"x-team": "acme"}
    job = httpx.post(f"{api.url}/v1/enrichment/jobs", headers=a,
                     json={"workflow": "keywords", "records": list(products(2))}).json()
    finished(wait, api, job["id"], a)
    other = {"x-team": "globex"}
    assert httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}", headers=other).status_code == 404
    assert httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results", headers=other).status_code == 404
    assert httpx.post(f"{api.url}/v1/enrichment/jobs/{job['id']}/cancel", headers=other).status_code == 404
    assert httpx.get(f"{api.url}/v1/enrichment/jobs", headers=other).json()["data"] == []
    f = httpx.post(f"{api.url}/v1/files", headers=a, data={"purpose": "batch"}, files={"file": ("x.jsonl", b"{}")})
    assert httpx.get(f"{api.url}/v1/files/{f.json()['id']}/content", headers=other).status_code == 404
    assert httpx.get(f"{api.url}/v1/files", headers=other).json()["data"] == []


def test_schema_step_reasks_then_fails_the_item_not_the_job(api, wait):
    job = httpx.post(f"{api.url}/v1/enrichment/jobs",
                     json={"workflow": "attributes", "records": list(products(4))}).json()
    job = finished(wait, api, job["id"])
    assert job["status"] == "completed" and job["progress"]["failed"] == 4
    entry = httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results").json()["data"][0]
    assert entry["error"]["code"] == "schema_validation_failed" and entry["outputs"]["clean"]["sku"]
    assert job["usage"]["output_tokens"] == 4 * 3 * 10  # the first answer and two re-asks per item


def test_tenant_workflow_with_guardrail_policies(app_services, api, wait):
    def upper(record, outputs, params):
        return record["title"].upper()

    registry = app_services.batch.registry
    steps = (PythonStep("shout", fn=upper),
             LLMStep("pitch", prompt=Prompt("p1", "Sell {{ shout }} to {{ params.audience }}"),
                     params={"max_tokens": 8}),
             GuardrailStep("no_fox", target="pitch", rule=lambda out, g, r: "fox" in out and "mentions a fox",
                           policy="retry", max_retries=2),
             GuardrailStep("short", target="shout", rule=lambda out, g, r: len(out) > g["max_chars"] and "too long",
                           policy="drop"))
    registry.register(Workflow("pitch", steps), team="acme", params={"audience": "cats",
                                                                     "guidelines": {"max_chars": 5}})
    job = httpx.post(f"{api.url}/v1/enrichment/jobs", headers={"x-team": "acme"},
                     json={"workflow": "pitch", "records": list(products(2)), "params": {"seed": 7}}).json()
    job = finished(wait, api, job["id"], {"x-team": "acme"})
    assert job["progress"]["done"] == 2 and job["progress"]["flagged"] == 2
    e = httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results", headers={"x-team": "acme"}).json()["data"][0]
    assert e["flags"] == {"pitch": "flagged", "no_fox": "flagged", "shout": "dropped", "short": "dropped"}
    assert e["outputs"]["shout"] is None and e["outputs"]["pitch"].startswith("The quick")
    assert e["outputs"]["no_fox"] == {"passed": False, "reason": "mentions a fox", "retries": 2, "policy": "retry"}
    r = httpx.post(f"{api.url}/v1/enrichment/jobs", json={"workflow": "pitch", "records": [{"title": "x"}]})
    assert r.status_code == 400  # another team does not see acme's workflow


def test_a_retried_item_resumes_after_its_finished_steps(app_services, api, wait, fake):
    from lmops.batch.workflows.steps import StepFailed

    tries: dict[str, int] = {}

    def flaky(record, outputs, params):
        tries[record["sku"]] = tries.get(record["sku"], 0) + 1
        if tries[record["sku"]] == 1:
            raise StepFailed("flaky", "first try fails", retryable=True)
        return outputs["title"].upper()

    app_services.batch.registry.register(Workflow("two-levels", (
        LLMStep("title", prompt=Prompt("t1", "Title for {{ record.title }}"), params={"max_tokens": 16}),
        PythonStep("shout", fn=flaky, after=("title",)))))
    job = httpx.post(f"{api.url}/v1/enrichment/jobs",
                     json={"workflow": "two-levels", "records": list(products(5))}).json()
    job = finished(wait, api, job["id"])
    assert job["progress"]["done"] == 5 and set(tries.values()) == {2}
    assert fake.engine.requests == 5  # the llm step ran once per item: the retry resumed from its checkpoint
    assert job["usage"]["output_tokens"] == 5 * 10  # and its tokens were counted once
    e = httpx.get(f"{api.url}/v1/enrichment/jobs/{job['id']}/results").json()["data"][0]
    assert e["outputs"]["shout"] == "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG."
