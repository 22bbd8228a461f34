"""/openapi.json documents the request bodies that routes parse themselves; /docs renders it without a CDN."""

from __future__ import annotations

import json

import httpx
import pytest

from lmops.api.openapi_bodies import schema_of
from lmops.app import create_app
from lmops.protocol.chat import ChatCompletionRequest
from lmops.testing.server import ServerThread
from lmops.testing.settings import make_settings


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("openapi"),
                             [{"name": "fake", "engine": "openai", "replicas": ["http://127.0.0.1:9/v1"]}],
                             access={"enabled": True})  # the admin API exists only with access control
    srv = ServerThread(create_app(settings)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def spec(spec_server):
    return httpx.get(f"{spec_server.url}/openapi.json").json()


def _body(spec: dict, path: str, method: str = "post") -> dict:
    return spec["paths"][path][method]["requestBody"]["content"]


@pytest.mark.parametrize("path, required", [
    ("/v1/chat/completions", {"model", "messages"}),
    ("/v1/completions", {"model", "prompt"}),
    ("/v1/embeddings", {"model", "input"}),
    ("/v1/images/generations", {"model", "prompt"}),
    ("/v1/batches", {"input_file_id", "endpoint"}),
    ("/admin/teams", {"name"}),
    ("/api/chat/conversations/{conversation_id}/messages", {"content"}),
])
def test_json_bodies_are_documented_with_their_required_fields(spec, path, required):
    schema = _body(spec, path)["application/json"]["schema"]
    assert required <= set(schema["required"])
    assert required <= set(schema["properties"])


def test_nested_definitions_are_inlined_so_each_operation_stands_alone(spec):
    chat = _body(spec, "/v1/chat/completions")["application/json"]["schema"]
    bodies = [op["requestBody"] for ops in spec["paths"].values() for op in ops.values() if "requestBody" in op]
    assert len(bodies) >= 10 and "$ref" not in json.dumps(bodies)
    message = chat["properties"]["messages"]["items"]
    assert {"role", "content"} <= set(message["properties"])
    assert set(chat["properties"]) == set(schema_of(ChatCompletionRequest)["properties"])


def test_uploads_are_documented_as_multipart_with_a_binary_file(spec):
    files = _body(spec, "/v1/files")["multipart/form-data"]["schema"]
    assert files["properties"]["file"] == {"type": "string", "format": "binary"}
    assert set(files["required"]) == {"purpose", "file"}
    assert set(files["properties"]["purpose"]["enum"]) == {"batch", "enrichment"}
    job = _body(spec, "/v1/enrichment/jobs")
    assert {"application/json", "multipart/form-data"} == set(job)
    assert job["multipart/form-data"]["schema"]["properties"]["params"]["type"] == "string"  # JSON text in a form
    assert "records" in job["application/json"]["schema"]["required"]


def test_a_self_referencing_model_is_refused_rather_than_inlined_forever():
    from pydantic import BaseModel

    class Node(BaseModel):
        children: list["Node"] = []

    with pytest.raises(ValueError, match="refers to itself"):
        schema_of(Node)


def test_docs_page_and_its_assets_are_served_by_lmops_not_a_cdn(spec_server):
    page = httpx.get(f"{spec_server.url}/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "cdn." not in page.text and "/openapi.json" in page.text
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")):
        assert f"/docs/assets/{asset}" in page.text
        got = httpx.get(f"{spec_server.url}/docs/assets/{asset}")
        assert got.status_code == 200 and kind in got.headers["content-type"] and len(got.content) > 10_000
    assert httpx.get(f"{spec_server.url}/docs/assets/nope.js").status_code == 404
