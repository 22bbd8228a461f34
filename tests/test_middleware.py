"""One middleware stack for every route: request id, CORS, the body limit and one log line per request apply to
the inference routes exactly as to the others."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from lmops.app import create_app
from lmops.testing.fake_openai import FakeOpenAI

ORIGIN = "https://chat.example.org"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def gw(serve, settings_factory):
    up = serve(FakeOpenAI())
    settings = settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}],
                                server={"max_body_bytes": 4096, "cors_origins": [ORIGIN]})
    return serve(create_app(settings))


@pytest.fixture
def request_lines() -> Iterator[list[logging.LogRecord]]:
    """The "request finished" records the gateway logs while the test runs."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "request finished":
                records.append(record)

    logger = logging.getLogger("lmops")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 2}),
    ("GET", "/v1/models", None),
    ("GET", "/health", None),
])
def test_cors_on_every_route(gw, method, path, body):
    preflight = httpx.options(gw.url + path, headers={"origin": ORIGIN, "access-control-request-method": method,
                                                      "access-control-request-headers": "authorization,content-type"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert method in preflight.headers["access-control-allow-methods"]
    resp = httpx.request(method, gw.url + path, json=body, headers={"origin": ORIGIN})
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in resp.headers["access-control-expose-headers"]
    assert resp.headers["x-request-id"].startswith("req_")


def test_cors_is_off_for_other_origins_and_by_default(gw, serve, settings_factory):
    resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"origin": "https://evil.example"})
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers
    up = serve(FakeOpenAI())
    plain = serve(create_app(settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}])))
    resp = httpx.post(plain.url + "/v1/chat/completions", json=CHAT, headers={"origin": ORIGIN})
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/batches", "/v1/enrichment/jobs"])
def test_body_limit_on_every_route(gw, path):
    big = b'{"pad": "' + b"x" * 5000 + b'"}'
    declared = httpx.post(gw.url + path, content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"]["code"] == "payload_too_large"
    assert declared.headers["x-request-id"].startswith("req_")

    def chunks() -> Iterator[bytes]:  # no content-length: the limit applies as the bytes arrive
        yield from (big[i:i + 1000] for i in range(0, len(big), 1000))

    chunked = httpx.post(gw.url + path, content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    assert chunked.json()["error"]["code"] == "payload_too_large"


def test_one_log_line_per_request_with_what_the_route_knows(gw, request_lines):
    chat = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"x-request-id": "trace-1"})
    models = httpx.get(gw.url + "/v1/models", headers={"x-request-id": "trace-2"})
    missing = httpx.get(gw.url + "/v1/nowhere", headers={"x-request-id": "trace-3"})
    assert (chat.status_code, models.status_code, missing.status_code) == (200, 200, 404)
    by_path = {r.path: r for r in request_lines}  # type: ignore[attr-defined]
    assert len(request_lines) == 3 and set(by_path) == {"/v1/chat/completions", "/v1/models", "/v1/nowhere"}
    line = by_path["/v1/chat/completions"]
    assert (line.method, line.status, line.model) == ("POST", 200, "m")  # type: ignore[attr-defined]
    usage = chat.json()["usage"]
    assert (line.prompt_tokens, line.completion_tokens) == (  # type: ignore[attr-defined]
        usage["prompt_tokens"], usage["completion_tokens"])
    assert by_path["/v1/nowhere"].status == 404  # type: ignore[attr-defined]
    assert all(r.latency_ms > 0 for r in request_lines)  # type: ignore[attr-defined]
