"""The streaming client against real sockets: what it records for good streams, engines without usage, failures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from lmops.bench.client import Record, request_body, stream_chat
from lmops.testing.fake_openai import Behaviour, FakeOpenAI, receive_body
from lmops.testing.server import ServerThread, free_port

MESSAGES = [{"role": "user", "content": "hi"}]


async def _one(url: str, max_tokens: int = 100, scheduled_ago: float = 0.0, keep_text: bool = False
               ) -> tuple[Record, str]:
    t0 = time.perf_counter() - scheduled_ago
    rec = Record("a", "c=1", 0, 0, 0, "dataset", 0.0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        text = await stream_chat(session, url, request_body("m", MESSAGES, max_tokens, {}), rec, t0,
                                 keep_text=keep_text)
    return rec, text


def test_a_stream_is_timed_and_counted_from_usage():
    fake = FakeOpenAI(Behaviour(chunk_delay=0.01, words=12))
    with ServerThread(fake) as srv:
        rec, text = asyncio.run(_one(f"{srv.url}/v1/chat/completions", keep_text=True))
    assert rec.error is None
    assert fake.last_body["stream_options"] == {"include_usage": True} and fake.last_body["max_tokens"] == 100
    assert (rec.output_tokens, rec.tokens_from, rec.prompt_tokens) == (12, "usage", 7)
    assert len(rec.itl) == 11 and min(rec.itl) >= 0.008  # the fake waits 10 ms between chunks
    assert rec.ttft < rec.ttst < rec.e2e and rec.tpot >= 0.008
    assert text == "The quick brown fox jumps over the lazy dog.The quick"


def test_queueing_before_sending_counts_in_every_latency():
    with ServerThread(FakeOpenAI(Behaviour(words=3))) as srv:
        rec, _ = asyncio.run(_one(f"{srv.url}/v1/chat/completions", scheduled_ago=0.5))
    assert rec.queued >= 0.5 and rec.ttft >= 0.5 and rec.e2e >= 0.5


async def _no_usage_engine(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An engine that streams three content chunks and ignores ``stream_options`` (no usage chunk)."""
    if scope["type"] != "http":
        return
    await receive_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for piece in ("Hel", "lo", "!"):
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\r\n\r\n",
                    "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\r\n\r\n", "more_body": False})


def test_without_usage_tokens_are_the_streamed_chunks():
    with ServerThread(_no_usage_engine, lifespan="off") as srv:
        rec, text = asyncio.run(_one(f"{srv.url}/v1/chat/completions", keep_text=True))
    assert (rec.error, rec.output_tokens, rec.tokens_from, text) == (None, 3, "chunks", "Hello!")


@pytest.mark.parametrize(("behaviour", "kind"), [(Behaviour(fail=True), "http_500"),
                                                 (Behaviour(truncate_after=3), "truncated"),
                                                 (Behaviour(answer={"choices": []}), "empty"),
                                                 (Behaviour(answer=[1, 2]), "bad_stream")])
def test_failures_are_recorded_by_kind(behaviour, kind):
    with ServerThread(FakeOpenAI(behaviour)) as srv:
        rec, _ = asyncio.run(_one(f"{srv.url}/v1/chat/completions"))
    assert rec.error == kind and rec.ttft is None and rec.output_tokens == 0


def test_a_closed_port_is_a_connect_error_and_a_slow_answer_a_timeout():
    rec, _ = asyncio.run(_one(f"http://127.0.0.1:{free_port()}/v1/chat/completions"))
    assert rec.error == "connect"

    async def slow(url: str) -> Record:
        rec = Record("a", "c=1", 0, 0, 0, "dataset", 0.0)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            await stream_chat(session, url, request_body("m", MESSAGES, 5, {}), rec, time.perf_counter())
        return rec

    with ServerThread(FakeOpenAI(Behaviour(delay=5))) as srv:
        assert asyncio.run(slow(f"{srv.url}/v1/chat/completions")).error == "timeout"
