"""Bad input gets the right 4xx OpenAI error envelope, never a 500."""

from __future__ import annotations

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.testing.fake_openai import FakeOpenAI


@pytest.fixture
def gw(serve, settings_factory):
    up = serve(FakeOpenAI())
    settings = settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}],
                                server={"max_body_bytes": 4096})
    return serve(create_app(settings))


def envelope(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"]
    return err


CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1, 2]", b"null", b"\xff\xfe"])
def test_malformed_bodies(gw, raw):
    err = envelope(httpx.post(gw.url + CHAT, content=raw, headers={"content-type": "application/json"}), 400)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,param", [
    ({"model": "m", "messages": "hello"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m"}, "messages"),
    ({"messages": OK_MESSAGES}, "model"),
    ({"model": 5, "messages": OK_MESSAGES}, "model"),
    ({"model": "m", "messages": OK_MESSAGES, "max_tokens": -1}, "max_tokens"),
    ({"model": "m", "messages": OK_MESSAGES, "max_tokens": "ten"}, "max_tokens"),
    ({"model": "m", "messages": OK_MESSAGES, "temperature": 5}, "temperature"),
    ({"model": "m", "messages": OK_MESSAGES, "top_p": 0}, "top_p"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages.0"),
    ({"model": "m", "messages": OK_MESSAGES, "stream": "yes"}, "stream"),
    ({"model": "m", "messages": OK_MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "m", "messages": OK_MESSAGES, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"model": "m", "messages": OK_MESSAGES, "top_k": "abc"}, "top_k"),
    ({"model": "m", "messages": OK_MESSAGES, "min_p": [1]}, "min_p"),
    ({"model": "m", "messages": OK_MESSAGES, "min_p": 2}, "min_p"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0"),
])
def test_wrong_fields_name_the_field(gw, body, param):
    err = envelope(httpx.post(gw.url + CHAT, json=body), 400)
    assert err["param"] == param, err


def test_unknown_model_is_404(gw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=OK_MESSAGES)
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_oversize_body_is_413(gw):
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]}
    err = envelope(httpx.post(gw.url + CHAT, json=big), 413)
    assert "limit" in err["message"]


def test_oversize_chunked_body_is_413(gw):
    def chunks():
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    envelope(httpx.post(gw.url + CHAT, content=chunks(), headers={"content-type": "application/json"}), 413)


def test_max_tokens_beyond_context_is_400(gw):
    err = envelope(httpx.post(gw.url + CHAT, json={"model": "m", "messages": OK_MESSAGES, "max_tokens": 10**6}), 400)
    assert err["code"] == "context_length_exceeded"


def test_completions_and_embeddings_validate_too(gw):
    envelope(httpx.post(gw.url + "/v1/completions", json={"model": "m"}), 400)
    envelope(httpx.post(gw.url + "/v1/completions", json={"model": "m", "prompt": []}), 400)
    envelope(httpx.post(gw.url + "/v1/completions", json={"model": "m", "prompt": ["a", 7]}), 400)
    envelope(httpx.post(gw.url + "/v1/embeddings", json={"model": "m", "input": []}), 400)


def test_unknown_route_and_method(gw):
    envelope(httpx.get(gw.url + "/v1/nothing"), 404)
    wrong = httpx.get(gw.url + CHAT)
    envelope(wrong, 405)
    assert wrong.headers["allow"] == "POST"
    # Two routes share this path (GET lists files, POST uploads): Allow names both, not the first one found.
    wrong = httpx.delete(gw.url + "/v1/files")
    assert "GET or HEAD or POST" in envelope(wrong, 405)["message"]
    assert wrong.headers["allow"] == "GET, HEAD, POST"


def test_chat_on_an_embeddings_only_engine_is_400(serve, settings_factory):
    pytest.importorskip("sentence_transformers")
    settings = settings_factory([{"name": "emb", "engine": "sentence-transformers"}])
    srv = serve(create_app(settings))
    err = envelope(httpx.post(srv.url + CHAT, json={"model": "emb", "messages": OK_MESSAGES}), 400)
    assert "does not serve chat" in err["message"]


def test_bad_requests_leave_records(gw):
    import time

    httpx.post(gw.url + CHAT, content=b"{bad")
    httpx.post(gw.url + CHAT, json={"model": "nope", "messages": OK_MESSAGES})
    services = gw.server.config.app.state.services
    deadline = time.monotonic() + 3
    while services.core.records.written < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert services.core.records.written >= 2
