"""Stream chunks that arrive together travel through lmops together; a trickle is forwarded as it comes.

An upstream under load (or a fast one) delivers many SSE events in one network read. The engine hands them on as
one batch, the API layer turns a batch into one event string, and the SSE response sends that in one write: a
burst of n events costs one write instead of n.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import orjson
import pytest

from lmops.app import create_app
from lmops.engines.openai_http import OpenAIHTTPEngine
from lmops.serving.sse import EventStreamResponse
from lmops.testing.fake_openai import WORDS, Behaviour, FakeOpenAI

CHAT = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _burst_body(model: str) -> bytes:
    """A vLLM-shaped stream (role, one chunk per word, finish, usage, [DONE]) as one piece of bytes."""
    def chunk(choices: list, usage: dict | None = None) -> bytes:
        return b"data: " + orjson.dumps({"id": "cmpl-burst", "object": "chat.completion.chunk", "created": 0,
                                         "model": model, "choices": choices, "usage": usage}) + b"\n\n"

    def delta(content: dict, finish: str | None = None) -> list:
        return [{"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}]

    events = [chunk(delta({"role": "assistant", "content": ""}))]
    events += [chunk(delta({"content": word})) for word in WORDS]
    events += [chunk(delta({}, "stop")), chunk([], {"prompt_tokens": 3, "completion_tokens": len(WORDS),
                                                     "total_tokens": 3 + len(WORDS)})]
    return b"".join(events) + b"data: [DONE]\n\n"


class BurstUpstream:
    """An OpenAI-compatible upstream whose whole stream leaves in one ASGI message (one write); ``body`` replaces
    the stream."""

    def __init__(self, body: bytes | None = None):
        self.body = body

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            payload = orjson.dumps({"object": "list", "data": [{"id": "up", "object": "model"}]})
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": payload})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": self.body or _burst_body(orjson.loads(body)["model"])})


async def _batches(engine: OpenAIHTTPEngine) -> list[list[dict]]:
    await engine.start()
    try:
        return [batch async for batch in engine.stream_chat_completion(CHAT)]
    finally:
        await engine.close()


async def test_the_engine_hands_on_the_events_of_one_read_as_one_batch(serve) -> None:
    up = serve(BurstUpstream())
    batches = await _batches(OpenAIHTTPEngine(f"{up.url}/v1"))
    assert len(batches) == 1
    chunks = batches[0]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "".join(WORDS)
    assert chunks[-1]["usage"]["completion_tokens"] == len(WORDS)


async def test_the_engine_hands_on_a_trickle_chunk_by_chunk(serve) -> None:
    up = serve(FakeOpenAI(Behaviour(chunk_delay=0.03, words=3)))
    batches = await _batches(OpenAIHTTPEngine(f"{up.url}/v1"))
    assert [len(batch) for batch in batches] == [1] * 5  # three words, the finish chunk, the usage chunk
    assert batches[-1][0]["usage"]["completion_tokens"] == 3


def _chunked_pieces(url: str, body: bytes) -> list[bytes]:
    """POST ``body`` over a raw socket; the pieces of the chunked response body, as the server framed them
    (one per ASGI body message it sent)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        raw = b""
        while data := sock.recv(65536):
            raw += data
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    pieces = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return pieces
        pieces.append(rest[:size])
        rest = rest[size + 2:]


def test_a_burst_from_the_upstream_leaves_lmops_in_one_piece(serve, settings_factory) -> None:
    up = serve(BurstUpstream())
    settings = settings_factory([{"name": "m", "engine": "openai", "upstream_model": "up",
                                  "replicas": [f"{up.url}/v1"]}])
    srv = serve(create_app(settings))
    pieces = _chunked_pieces(srv.url, orjson.dumps({**CHAT, "model": "m"}))
    events = b"".join(pieces).split(b"\n\n")[:-1]
    words = [orjson.loads(e[6:])["choices"][0]["delta"].get("content") for e in events if e != b"data: [DONE]"]
    assert "".join(w or "" for w in words) == "".join(WORDS) and events[-1] == b"data: [DONE]"
    # 13 events (no usage chunk: the client did not ask for one) and [DONE]: the events in one piece, [DONE] in
    # another (the pool's read may split the upstream's bytes once: at most one piece more).
    assert len(events) == 13 and len(pieces) <= 3


def test_an_error_event_in_a_burst_ends_the_stream_after_the_events_before_it(serve, settings_factory) -> None:
    good = _burst_body("up").split(b"\n\n")[:4]  # role and three words
    error = b'data: {"error": {"message": "engine overloaded", "type": "server_error"}}'
    up = serve(BurstUpstream(b"\n\n".join([*good, error, *good]) + b"\n\n"))
    settings = settings_factory([{"name": "m", "engine": "openai", "upstream_model": "up",
                                  "replicas": [f"{up.url}/v1"]}])
    srv = serve(create_app(settings))
    events = b"".join(_chunked_pieces(srv.url, orjson.dumps({**CHAT, "model": "m"}))).split(b"\n\n")[:-1]
    sent = [orjson.loads(e[6:]) for e in events]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in sent[:-1]) == "".join(WORDS[:3])
    assert "engine overloaded" in sent[-1]["error"]["message"] and len(sent) == 5  # nothing after the error


class _Client:
    """The ASGI side of one streamed response: what the server was asked to send, and when the client leaves."""

    def __init__(self, leaves_after: float = 3600.0):
        self.leaves_after = leaves_after
        self.sent: list[dict] = []

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        await asyncio.sleep(0)  # a real server's write lets other tasks run

    async def receive(self) -> dict:
        await asyncio.sleep(self.leaves_after)
        return {"type": "http.disconnect"}

    async def run(self, events) -> list[dict]:  # type: ignore[no-untyped-def]
        """Serve ``events``; the body messages sent (also kept when the response raises)."""
        async with asyncio.timeout(5):  # in this task, which the response may cancel and must restore
            await EventStreamResponse(events)({"type": "http"}, self.receive, self.send)
        return self.bodies

    @property
    def bodies(self) -> list[dict]:
        return [m for m in self.sent if m["type"] == "http.response.body"]


async def test_each_event_is_one_write_and_a_trickle_goes_out_as_it_comes() -> None:
    async def trickle():  # type: ignore[no-untyped-def]
        yield b"data: 0\n\ndata: 1\n\n"  # a batch: one event string
        for i in range(2, 4):
            await asyncio.sleep(0.01)  # a token at a time
            yield b"data: %d\n\n" % i

    bodies = await _Client().run(trickle())
    assert [m["body"] for m in bodies] == [b"data: 0\n\ndata: 1\n\n", b"data: 2\n\n", b"data: 3\n\n", b""]
    assert bodies[-1]["more_body"] is False


async def test_an_error_in_the_events_reaches_the_server_after_what_came_before() -> None:
    async def broken():  # type: ignore[no-untyped-def]
        yield b"data: 0\n\n"
        await asyncio.sleep(0.01)
        raise RuntimeError("engine gone")

    client = _Client()
    with pytest.raises(RuntimeError, match="engine gone"):
        await client.run(broken())
    assert [m.get("body") for m in client.bodies] == [b"data: 0\n\n"]


async def test_a_client_leaving_while_the_engine_thinks_stops_the_events() -> None:
    stopped = asyncio.Event()

    async def thinking():  # type: ignore[no-untyped-def]
        yield b"data: 0\n\n"
        try:
            await asyncio.sleep(3600)  # no next token for a long time
            yield b"data: never\n\n"
        finally:
            stopped.set()

    bodies = await _Client(leaves_after=0.05).run(thinking())
    assert stopped.is_set()
    assert [m.get("body") for m in bodies] == [b"data: 0\n\n"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # the client's leaving is undone


async def test_the_servers_own_cancellation_is_not_swallowed() -> None:
    stopped = asyncio.Event()

    async def thinking():  # type: ignore[no-untyped-def]
        yield b"data: 0\n\n"
        try:
            await asyncio.sleep(3600)
            yield b"data: never\n\n"
        finally:
            stopped.set()

    task = asyncio.ensure_future(_Client().run(thinking()))
    await asyncio.sleep(0.05)
    task.cancel()  # uvicorn shutting down
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped.is_set()
