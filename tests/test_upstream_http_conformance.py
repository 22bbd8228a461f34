"""How the upstream engine (engines/openai_http.py, the code path the gateway uses) copes with what real HTTP/1.1
servers do, against a server on a real socket that writes exact bytes (lmops.testing.scripted_http).

Covered: interim 1xx answers (100 Continue, 103 Early Hints), chunked bodies with trailers, ``Connection: close``,
a server closing mid-body, a slow body, an upstream trickling bytes (deadlines), a client that stops reading, a
kept-alive connection the server closed, no automatic resend of a POST (on the same replica or another), and header
values with CR/LF (refused when the configuration is loaded). Each test checks what the server really received, not
only what the engine returned.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import openai
import orjson
import pytest

from lmops.app import create_app
from lmops.config import ConfigError, load_settings
from lmops.engines.base import EngineConnectionLost, EngineTimeout
from lmops.engines.openai_http import OpenAIHTTPEngine
from lmops.testing.scripted_http import Conn, Request, ScriptedServer

CHAT = {"model": "up", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = [{"role": "user", "content": "hi"}]


# -- what the scripted server writes ---------------------------------------------------------------------------------
def answer(content: str) -> bytes:
    """A chat completion whose message is ``content``."""
    return orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "up",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def response(body: bytes, *headers: str, status: str = "200 OK", length: bool = True) -> bytes:
    head = [f"HTTP/1.1 {status}", "content-type: application/json", *headers]
    if length:
        head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def event(word: str | None) -> bytes:
    """One SSE event: a content chunk (``word``), or the usage chunk (None)."""
    if word is None:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "up", "choices": [],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    else:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "up",
                 "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


DONE = b"data: [DONE]\n\n"
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
               b"trailer: x-checksum\r\n\r\n")


def chunk(data: bytes) -> bytes:
    """``data`` as one piece of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK_WITH_TRAILERS = b"0\r\nx-checksum: 1234\r\nx-other: yes\r\n\r\n"
MODELS = response(orjson.dumps({"object": "list", "data": [{"id": "up", "object": "model"}]}))


def posts(server: ScriptedServer) -> list[Request]:
    return [r for r in server.requests if r.method == "POST"]


def words(batches: list[list[dict]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for b in batches for c in b if c["choices"])


@asynccontextmanager
async def engine_for(server: ScriptedServer, **options: object) -> AsyncIterator[OpenAIHTTPEngine]:
    """The engine the gateway would build for this replica: one pooled connection unless told otherwise."""
    options.setdefault("max_connections", 1)
    engine = OpenAIHTTPEngine(server.url + "/v1", proxy=False, **options)  # type: ignore[arg-type]
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


async def content(engine: OpenAIHTTPEngine) -> str:
    return (await engine.chat_completion(CHAT))["choices"][0]["message"]["content"]


async def stream(engine: OpenAIHTTPEngine) -> list[list[dict]]:
    return [batch async for batch in engine.stream_chat_completion(CHAT)]


def numbered(first: Callable[[Conn], Awaitable[None]]) -> Callable[[Request, Conn], Awaitable[None]]:
    """A script: GET /models is answered; the first POST by ``first``; POST n (from 0) with ``answer n``."""
    count = [0]

    async def script(request: Request, conn: Conn) -> None:
        if request.method == "GET":
            await conn.write(MODELS)
            return
        n, count[0] = count[0], count[0] + 1
        if n == 0:
            await first(conn)
        else:
            await conn.write(response(answer(f"answer {n}")))

    return script


# -- 1xx -------------------------------------------------------------------------------------------------------------
async def interim_then_answer(conn: Conn) -> None:
    await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await conn.write(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
    await asyncio.sleep(0.05)
    await conn.write(response(answer("answer 0")))


async def test_interim_1xx_answers_are_skipped_and_each_request_gets_its_own_answer() -> None:
    with ScriptedServer(numbered(interim_then_answer)) as server:
        async with engine_for(server) as engine:
            assert [await content(engine) for _ in range(3)] == ["answer 0", "answer 1", "answer 2"]
        assert [r.connection for r in server.requests] == [0, 0, 0]  # one kept-alive connection, in step


async def test_interim_1xx_answers_before_a_stream() -> None:
    async def first(conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.js>; rel=preload\r\n\r\n")
        await conn.write(STREAM_HEAD + chunk(event("early") + event(None) + DONE) + b"0\r\n\r\n")

    with ScriptedServer(numbered(first)) as server:
        async with engine_for(server) as engine:
            batches = await stream(engine)
            assert words(batches) == "early" and batches[-1][-1]["usage"]["completion_tokens"] == 2
            assert await content(engine) == "answer 1"
        assert [r.connection for r in server.requests] == [0, 0]


def test_interim_1xx_answers_through_the_gateway(serve, settings_factory) -> None:
    with ScriptedServer(numbered(interim_then_answer)) as server:
        settings = settings_factory([{"name": "m", "engine": "openai", "upstream_model": "up",
                                      "replicas": [f"{server.url}/v1"]}])
        srv = serve(create_app(settings))
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
        got = [client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
               for _ in range(3)]
        assert got == ["answer 0", "answer 1", "answer 2"]
        assert len(posts(server)) == 3


# -- chunked bodies with trailers ------------------------------------------------------------------------------------
async def test_chunked_bodies_with_trailers_keep_the_connection() -> None:
    async def script(request: Request, conn: Conn) -> None:
        if orjson.loads(request.body).get("stream"):
            await conn.write(STREAM_HEAD)
            for piece in (event("one"), event(" two"), event(None) + DONE):
                await conn.write(chunk(piece))
                await asyncio.sleep(0.02)
            await conn.write(LAST_CHUNK_WITH_TRAILERS)
        else:
            body = answer("chunked")
            await conn.write(response(b"", "transfer-encoding: chunked", "trailer: x-checksum", length=False)
                             + chunk(body[:10]) + chunk(body[10:]) + LAST_CHUNK_WITH_TRAILERS)

    with ScriptedServer(script) as server:
        async with engine_for(server) as engine:
            batches = await stream(engine)
            assert [len(b) for b in batches] == [1, 1, 1]  # each event as its own read arrived
            assert words(batches) == "one two" and batches[-1][0]["usage"]["total_tokens"] == 3
            assert await content(engine) == "chunked"
            assert words(await stream(engine)) == "one two"
            assert await content(engine) == "chunked"
        # the trailers were read as the end of each body: every exchange went on the one connection
        assert orjson.loads(server.requests[0].body)["stream_options"] == {"include_usage": True}
        assert [r.connection for r in server.requests] == [0, 0, 0, 0]


# -- Connection: close -----------------------------------------------------------------------------------------------
async def test_connection_close_answers() -> None:
    async def script(request: Request, conn: Conn) -> None:
        n = len(server.requests) - 1
        if n % 2 == 0:  # announced, with a length
            await conn.write(response(answer(f"close {n}"), "connection: close"))
        else:  # a body delimited by the end of the connection
            await conn.write(response(answer(f"close {n}"), "connection: close", length=False))
        conn.close()

    server = ScriptedServer(script)
    with server:
        async with engine_for(server) as engine:
            assert [await content(engine) for _ in range(4)] == ["close 0", "close 1", "close 2", "close 3"]
        assert [r.connection for r in server.requests] == [0, 1, 2, 3]  # a new connection each time


# -- a server closing mid-body ---------------------------------------------------------------------------------------
async def test_a_server_closing_mid_body_is_an_error_and_the_request_is_not_sent_again() -> None:
    async def first(conn: Conn) -> None:
        body = answer("cut short")
        await conn.write(response(body)[: -len(body) // 2])  # the headers promise more than comes
        conn.close()

    with ScriptedServer(numbered(first)) as server:
        async with engine_for(server) as engine:
            with pytest.raises(EngineConnectionLost, match="not sent again"):
                await content(engine)
            assert len(posts(server)) == 1
            assert await content(engine) == "answer 1"  # the pool recovers
        assert len(posts(server)) == 2


async def test_a_stream_cut_mid_body_delivers_what_came_then_fails() -> None:
    async def first(conn: Conn) -> None:
        await conn.write(STREAM_HEAD + chunk(event("part")))
        await asyncio.sleep(0.05)
        await conn.write(b"100\r\ndata: {\"id\"")  # a chunk that never ends
        conn.close()

    with ScriptedServer(numbered(first)) as server:
        async with engine_for(server) as engine:
            batches = []
            with pytest.raises(EngineConnectionLost):
                async for batch in engine.stream_chat_completion(CHAT):
                    batches.append(batch)
            assert words(batches) == "part"
            assert await content(engine) == "answer 1"
        assert len(posts(server)) == 2


# -- a slow body -----------------------------------------------------------------------------------------------------
async def test_a_slow_body_within_the_read_timeout_arrives_whole() -> None:
    async def script(request: Request, conn: Conn) -> None:
        if orjson.loads(request.body).get("stream"):
            await conn.write(STREAM_HEAD)
            for piece in (event("s"), event("l"), event("o"), event("w"), event(None) + DONE):
                await asyncio.sleep(0.25)
                await conn.write(chunk(piece))
            await conn.write(b"0\r\n\r\n")
            return
        data = response(answer("slow"))
        for i in range(0, len(data), len(data) // 4 + 1):  # five pieces, 0.25 s apart: over a second in all
            await conn.write(data[i:i + len(data) // 4 + 1])
            await asyncio.sleep(0.25)

    with ScriptedServer(script) as server:
        async with engine_for(server, timeout=0.6) as engine:
            started = asyncio.get_running_loop().time()
            assert await content(engine) == "slow"
            batches = await stream(engine)
            assert asyncio.get_running_loop().time() - started > 2.0  # really slow, and the 0.6 s never ran out
            assert [len(b) for b in batches] == [1] * 5 and words(batches) == "slow"


async def test_a_body_silent_for_longer_than_the_read_timeout_is_a_timeout() -> None:
    async def first(conn: Conn) -> None:
        data = response(answer("too slow"))
        await conn.write(data[:40])
        await asyncio.sleep(1.0)
        await conn.write(data[40:])

    with ScriptedServer(numbered(first)) as server:
        async with engine_for(server, timeout=0.3) as engine:
            with pytest.raises(EngineTimeout):
                await content(engine)
            assert len(posts(server)) == 1  # the engine itself sends nothing twice


# -- an upstream that trickles bytes ---------------------------------------------------------------------------------
TRICKLE = 0.3  # seconds between two bytes: the upstream is never silent for the read timeout (1 s) of these tests


async def trickle(conn: Conn, data: bytes) -> None:
    """Write ``data`` one byte at a time, ``TRICKLE`` seconds apart, until it is written or the client has gone."""
    for i in range(len(data)):
        if conn.closed:
            return
        await conn.write(data[i:i + 1])
        await asyncio.sleep(TRICKLE)


async def trickled_answer(conn: Conn) -> None:
    await trickle(conn, response(answer("trickled " * 20)))


async def trickled_events(conn: Conn, whole: int = 0) -> None:
    """A stream: ``whole`` events at once, then one trickled."""
    await conn.write(STREAM_HEAD + b"".join(chunk(event("a")) for _ in range(whole)))
    last = event("b")
    await conn.write(b"%x\r\n" % len(last))  # a piece of the chunked body, its bytes to come
    await trickle(conn, last)


async def test_a_trickled_answer_is_cut_at_its_deadline() -> None:
    """One byte every 0.3 s never trips the 1 s read timeout; the 1.5 s deadline of the whole answer ends it."""
    with ScriptedServer(numbered(trickled_answer)) as server:
        async with engine_for(server, timeout=1.0, answer_timeout=1.5) as engine:
            started = asyncio.get_running_loop().time()
            with pytest.raises(EngineTimeout, match=r"did not send its whole answer within 1.5 s") as err:
                await content(engine)
            assert 1.5 <= asyncio.get_running_loop().time() - started < 2.5
            assert err.value.status == 504
            assert await content(engine) == "answer 1"  # the next request, on a new connection
        assert len(posts(server)) == 2 and [r.connection for r in posts(server)] == [0, 1]


async def test_a_stream_whose_event_trickles_is_cut_after_the_read_timeout() -> None:
    """Bytes keep coming but no event completes: ``timeout`` counts from the last complete event."""
    with ScriptedServer(numbered(lambda conn: trickled_events(conn, whole=1))) as server:
        async with engine_for(server, timeout=1.0) as engine:
            agen = engine.stream_chat_completion(CHAT)
            assert words([await agen.__anext__()]) == "a"
            started = asyncio.get_running_loop().time()
            with pytest.raises(EngineTimeout, match=r"sent no complete stream event in 1 s"):
                await agen.__anext__()
            assert 1.0 <= asyncio.get_running_loop().time() - started < 2.0


async def test_a_stream_whose_headers_trickle_is_cut_after_the_read_timeout() -> None:
    with ScriptedServer(numbered(lambda conn: trickle(conn, STREAM_HEAD))) as server:
        async with engine_for(server, timeout=1.0) as engine:
            started = asyncio.get_running_loop().time()
            with pytest.raises(EngineTimeout, match=r"did not send its answer's headers within 1 s"):
                await stream(engine)
            assert 1.0 <= asyncio.get_running_loop().time() - started < 2.0


async def test_a_stream_lasts_at_most_its_stream_timeout() -> None:
    """A complete event every 0.3 s, for ever: ``stream_timeout`` (1.5 s) ends it, after the events that came."""
    async def endless(conn: Conn) -> None:
        await conn.write(STREAM_HEAD)
        while not conn.closed:
            await conn.write(chunk(event("x")))
            await asyncio.sleep(TRICKLE)

    with ScriptedServer(numbered(endless)) as server:
        async with engine_for(server, timeout=1.0, stream_timeout=1.5) as engine:
            got: list[list[dict]] = []
            started = asyncio.get_running_loop().time()
            with pytest.raises(EngineTimeout, match=r"did not send the whole stream within 1.5 s"):
                async for batch in engine.stream_chat_completion(CHAT):
                    got.append(batch)
            assert 1.5 <= asyncio.get_running_loop().time() - started < 2.5
            assert 3 <= len(got) <= 6 and set(words(got)) == {"x"}


async def test_a_stream_refused_with_a_trickled_error_body_is_cut_after_the_read_timeout() -> None:
    refusal = response(b'{"error": {"message": "overloaded, ' + b"x" * 40 + b'"}}', status="500 Internal Server Error")

    async def first(conn: Conn) -> None:
        head, _, body = refusal.partition(b"\r\n\r\n")
        await conn.write(head + b"\r\n\r\n")
        await trickle(conn, body)

    with ScriptedServer(numbered(first)) as server:
        async with engine_for(server, timeout=1.0) as engine:
            started = asyncio.get_running_loop().time()
            with pytest.raises(EngineTimeout):
                await stream(engine)
            assert 1.0 <= asyncio.get_running_loop().time() - started < 2.0


async def test_what_trickles_after_done_holds_the_stream_end_at_most_a_second() -> None:
    """After [DONE] the engine reads on to the end of the body to keep the connection, for at most a second: the
    client does not wait for an upstream that trickles what follows; the connection is closed instead."""
    async def first(conn: Conn) -> None:
        await conn.write(STREAM_HEAD + chunk(event("a") + event(None) + DONE))
        await trickle(conn, chunk(b"\n" * 40))

    with ScriptedServer(numbered(first)) as server:
        async with engine_for(server, timeout=1.0) as engine:
            started = asyncio.get_running_loop().time()
            assert words(await stream(engine)) == "a"
            assert asyncio.get_running_loop().time() - started < 2.0
            assert await content(engine) == "answer 1"
        assert [r.connection for r in posts(server)] == [0, 1]  # the trickling connection was not kept


def test_the_gateway_answers_a_trickling_upstream_with_a_504_and_counts_it_against_the_replica(
        serve, settings_factory) -> None:
    """Two models, each on a replica of its own (two paths of one server) that trickles: a plain request and a
    stream, each a 504 timeout envelope, and each counted against its replica like any timeout (failure_threshold 1:
    the breaker would open, and stays closed only because it is the model's last replica)."""
    async def script(request: Request, conn: Conn) -> None:
        if request.method == "GET":
            await conn.write(MODELS)
        elif orjson.loads(request.body).get("stream"):
            await trickled_events(conn)  # no event before the timeout: the stream fails before its first byte
        else:
            await trickled_answer(conn)

    with ScriptedServer(script) as server:
        model = {"engine": "openai", "upstream_model": "up", "timeout": 1.0, "answer_timeout": 1.5}
        settings = settings_factory([{"name": "plain", "replicas": [f"{server.url}/a/v1"], **model},
                                     {"name": "streamed", "replicas": [f"{server.url}/b/v1"], **model}],
                                    health={"interval": 0.2, "timeout": 1.0, "failure_threshold": 1, "cooldown": 600})
        srv = serve(create_app(settings))
        for name, stream_it, message in [("plain", False, "did not send its whole answer within 1.5 s"),
                                         ("streamed", True, "sent no complete stream event in 1 s")]:
            t0 = time.monotonic()
            resp = httpx.post(f"{srv.url}/v1/chat/completions", timeout=10,
                              json={"model": name, "messages": MESSAGES, "stream": stream_it})
            assert resp.status_code == 504, resp.text
            error = resp.json()["error"]
            assert error["type"] == "timeout_error" and message in error["message"]
            assert time.monotonic() - t0 < 3.0
        (a,), (b,) = (srv.server.config.app.state.core.router.deployment(m).replicas for m in ("plain", "streamed"))
        assert a.breaker.held == b.breaker.held == 1  # counted against each replica, as any timeout
        assert len(posts(server)) == 2  # neither was sent again


# -- a client that stops reading -------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["aclose", "dropped"])
async def test_a_stream_the_client_stops_reading_frees_its_connection(how: str) -> None:
    async def endless(conn: Conn) -> None:  # one event every 20 ms until the client goes away
        await conn.write(STREAM_HEAD)
        while not conn.closed:
            await conn.write(chunk(event("x")))
            await asyncio.sleep(0.02)

    with ScriptedServer(numbered(endless)) as server:
        async with engine_for(server, timeout=2.0) as engine:  # a pool of one connection
            agen = engine.stream_chat_completion(CHAT)
            assert words([await agen.__anext__()]).startswith("x")
            if how == "aclose":
                await agen.aclose()  # what the router does when the client disconnects
            else:
                del agen  # never closed: garbage collection must still free the connection
                gc.collect()
            async with asyncio.timeout(5):  # the pool's one slot is free again
                assert [await content(engine) for _ in range(5)] == [f"answer {n}" for n in range(1, 6)]
            for _ in range(100):
                if server.conns[0].client_left:
                    break
                await asyncio.sleep(0.02)
        assert server.conns[0].client_left  # the abandoned connection was closed ...
        assert [r.connection for r in posts(server)] == [0, 1, 1, 1, 1, 1]  # ... not reused mid-body


# -- a kept-alive connection the server closed; no resend of a POST --------------------------------------------------
async def test_a_kept_alive_connection_closed_after_reading_the_request_is_not_resent() -> None:
    """The review's case: a reused connection that closes before any byte of the answer. The server may have
    started a generation, so the request is not sent again: the caller gets the error, the server saw it once."""
    count = [0]

    async def script(request: Request, conn: Conn) -> None:
        count[0] += 1
        if count[0] == 2:  # the second request, on the kept-alive connection: read, then closed
            conn.close()
            return
        await conn.write(response(answer(f"answer {count[0]}")))

    with ScriptedServer(script) as server:
        async with engine_for(server) as engine:
            assert await content(engine) == "answer 1"
            with pytest.raises(EngineConnectionLost, match="not sent again"):
                await content(engine)
            assert [r.connection for r in server.requests] == [0, 0]  # received once, never resent
            assert await content(engine) == "answer 3"
        assert [r.connection for r in server.requests] == [0, 0, 1]


async def test_a_stream_whose_kept_alive_connection_closed_is_not_resent() -> None:
    count = [0]

    async def script(request: Request, conn: Conn) -> None:
        count[0] += 1
        if count[0] == 2:
            conn.close()
            return
        await conn.write(STREAM_HEAD + chunk(event("ok") + event(None) + DONE) + b"0\r\n\r\n")

    with ScriptedServer(script) as server:
        async with engine_for(server) as engine:
            assert words(await stream(engine)) == "ok"
            with pytest.raises(EngineConnectionLost):
                await stream(engine)
        assert len(server.requests) == 2


async def test_a_kept_alive_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def script(request: Request, conn: Conn) -> None:
        await conn.write(response(answer(f"answer {len(server.requests)}")))  # keep-alive promised ...
        await asyncio.sleep(0.05)
        conn.close()  # ... then the server's keep-alive timeout closes it

    server = ScriptedServer(script)
    with server:
        async with engine_for(server) as engine:
            assert await content(engine) == "answer 1"
            await asyncio.sleep(0.3)
            assert await content(engine) == "answer 2"  # on a new connection, without an error
        assert [r.connection for r in server.requests] == [0, 1]  # each request received once


def test_the_gateway_sends_a_request_whose_connection_broke_to_no_other_replica(serve, settings_factory) -> None:
    """Two replicas (here on one server, under two paths): the one chosen reads the request and closes the
    connection. The client gets a 502, and neither replica receives the request again."""
    async def script(request: Request, conn: Conn) -> None:
        if request.method == "GET":
            await conn.write(MODELS)
        else:
            conn.close()

    with ScriptedServer(script) as server:
        settings = settings_factory([{"name": "m", "engine": "openai", "upstream_model": "up",
                                      "replicas": [f"{server.url}/a/v1", f"{server.url}/b/v1"]}])
        srv = serve(create_app(settings))
        for stream_it in (False, True):
            before = len(posts(server))
            resp = httpx.post(f"{srv.url}/v1/chat/completions", timeout=10,
                              json={"model": "m", "messages": MESSAGES, "stream": stream_it})
            assert resp.status_code == 502
            assert "not sent again" in resp.json()["error"]["message"]
            assert len(posts(server)) == before + 1


# -- header values with CR/LF ----------------------------------------------------------------------------------------
CONFIG = """\
models:
  - name: m
    engine: openai
    replicas: ["http://127.0.0.1:1/v1"]
    api_key_env: {var}
"""


@pytest.mark.parametrize("key", ["sk-abc\r\nx-injected: 1", "sk-abc\nx", "sk-abc\r"])
def test_an_api_key_with_a_line_break_is_refused_at_config_load(tmp_path, monkeypatch, key: str) -> None:
    monkeypatch.setenv("LMOPS_TEST_CRLF_KEY", key)
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(CONFIG.format(var="LMOPS_TEST_CRLF_KEY"))
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, database_url=f"sqlite:///{tmp_path / 'x.db'}")
    (problem,) = err.value.problems
    assert problem.location == "models.0.api_key_env" and (problem.line, problem.column) == (5, 18)
    assert "LMOPS_TEST_CRLF_KEY" in problem.message and "line break" in problem.message
    with pytest.raises(ValueError, match="line break"):  # and the engine refuses to be built with it
        OpenAIHTTPEngine("http://127.0.0.1:1/v1", api_key=key)
    monkeypatch.setenv("LMOPS_TEST_CRLF_KEY", "sk-abc")
    load_settings(cfg, database_url=f"sqlite:///{tmp_path / 'x.db'}")  # the same file with a clean key loads


def test_config_check_names_the_key_with_a_line_break(tmp_path) -> None:
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(CONFIG.format(var="LMOPS_TEST_CRLF_KEY"))
    result = subprocess.run([sys.executable, "-m", "lmops", "config", "check", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200", "LMOPS_TEST_CRLF_KEY": "sk-abc\r\nx-injected: 1"})
    err = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert "line 5, column 18: models.0.api_key_env" in err and "line break" in err
    assert "Traceback" not in result.stderr


def test_a_replica_url_with_a_line_break_is_refused_at_config_load(tmp_path) -> None:
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text('models:\n  - name: m\n    engine: openai\n    replicas: ["http://127.0.0.1:1/v1\\r\\nx: 1"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, database_url=f"sqlite:///{tmp_path / 'x.db'}")
    (problem,) = err.value.problems
    assert problem.location == "models.0.replicas" and problem.line == 4 and "line break" in problem.message
