"""Request ids, JSON logs and Prometheus metrics."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.observability.logging import JSONFormatter, request_id_var
from lmops.testing.fake_openai import Behaviour, FakeOpenAI


@pytest.fixture
def gw(serve, settings_factory):
    up = serve(FakeOpenAI())
    bad = serve(FakeOpenAI(Behaviour(fail=True)))
    settings = settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]},
                                 {"name": "broken", "engine": "openai", "replicas": [f"{bad.url}/v1"]}])
    return serve(create_app(settings))


def test_request_id_is_returned_and_caller_ids_are_kept(gw):
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": [{"role": "user",
                                                                                          "content": "x"}]})
    assert resp.headers["x-request-id"].startswith("req_")
    mine = httpx.get(f"{gw.url}/v1/models", headers={"x-request-id": "trace-123"})
    assert mine.headers["x-request-id"] == "trace-123"
    err = httpx.post(f"{gw.url}/v1/chat/completions", content=b"{")
    assert err.headers["x-request-id"].startswith("req_")
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions",
                      json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as s:
        assert s.headers["x-request-id"].startswith("req_")


def test_logs_are_json_with_the_request_id(gw, caplog):
    handler_records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handler_records.append(JSONFormatter().format(record))

    logger = logging.getLogger("lmops")
    cap = Capture()
    logger.addHandler(cap)
    try:
        resp = httpx.post(f"{gw.url}/v1/chat/completions",
                          json={"model": "broken", "messages": [{"role": "user", "content": "x"}]})
    finally:
        logger.removeHandler(cap)
    assert resp.status_code == 502
    rid = resp.headers["x-request-id"]
    lines = [json.loads(line) for line in handler_records]
    assert any(line.get("request_id") == rid for line in lines), lines
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= set(line)


def test_json_formatter_outside_a_request():
    token = request_id_var.set(None)
    try:
        out = json.loads(JSONFormatter().format(logging.LogRecord("lmops", logging.INFO, "", 0, "hello %s",
                                                                  ("x",), None)))
    finally:
        request_id_var.reset(token)
    assert out["msg"] == "hello x" and "request_id" not in out


def test_metrics_count_requests_errors_tokens_and_replicas(gw):
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    text = httpx.get(f"{gw.url}/metrics").text
    assert 'lmops_requests_total{endpoint="chat.completions",model="m",status="200"} 2.0' in text
    assert 'lmops_request_errors_total{endpoint="chat.completions",model="broken",status="502"} 1.0' in text
    assert 'lmops_tokens_total{direction="in",model="m"} 14.0' in text
    assert 'lmops_tokens_total{direction="out",model="m"} 20.0' in text
    assert 'lmops_request_latency_seconds_count{endpoint="chat.completions",model="m"} 2.0' in text
    assert 'lmops_time_to_first_token_seconds_count{model="m"} 1.0' in text
    assert "lmops_replica_inflight_requests{" in text
    assert "lmops_replica_queue_depth{" in text
    assert 'lmops_replica_healthy{model="broken"' in text


def test_an_unexpected_error_on_a_direct_route_is_a_500_envelope_with_the_request_id(serve, settings_factory):
    """The inference routes skip FastAPI's layers (api/direct.py): the last line of defence must still hold."""
    up = serve(FakeOpenAI())
    app = create_app(settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}]))

    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    app.state.services.core.inference.chat = broken
    gw = serve(app)
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": [{"role": "user",
                                                                                          "content": "x"}]})
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal_error"
    assert "a bug" not in resp.text and "Traceback" not in resp.text
    assert resp.headers["x-request-id"].startswith("req_")


def test_ids_are_time_ordered_and_unique():
    import time

    from lmops.ids import new_id

    first = [new_id() for _ in range(2000)]
    time.sleep(0.002)
    later = new_id()
    assert len(set(first)) == len(first)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first)
    assert later > max(first)  # a later millisecond sorts after every id of an earlier one
    assert abs(int(later[:12], 16) - time.time() * 1000) < 5000
