"""The SSE response sends what the events produced meanwhile in one write, and still forwards a trickle at once."""

from __future__ import annotations

import asyncio

import pytest

from lmops.serving.sse import EventStreamResponse


async def _run(events) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)
        await asyncio.sleep(0)  # a real server's write lets other tasks run

    async def receive() -> dict:
        await asyncio.sleep(3600)  # the client never leaves
        return {"type": "http.disconnect"}

    await EventStreamResponse(events)({"type": "http"}, receive, send)
    return [m for m in sent if m["type"] == "http.response.body"]


async def test_a_burst_leaves_in_fewer_writes_than_events():
    async def burst():
        for i in range(12):
            yield b"data: %d\n\n" % i  # all ready at once, as from one network read

    bodies = await _run(burst())
    assert b"".join(m["body"] for m in bodies) == b"".join(b"data: %d\n\n" % i for i in range(12))
    assert len(bodies) <= 3 and bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_trickle_is_forwarded_event_by_event():
    async def trickle():
        for i in range(3):
            await asyncio.sleep(0.01)  # a token at a time
            yield b"data: %d\n\n" % i

    bodies = await _run(trickle())
    assert [m["body"] for m in bodies] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]


async def test_an_error_in_the_events_reaches_the_server_after_what_came_before():
    async def broken():
        yield b"data: 0\n\n"
        await asyncio.sleep(0.01)
        raise RuntimeError("engine gone")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    with pytest.raises(RuntimeError, match="engine gone"):
        await EventStreamResponse(broken())({"type": "http"}, receive, send)
    assert [m.get("body") for m in sent if m["type"] == "http.response.body"] == [b"data: 0\n\n"]


async def test_a_client_leaving_while_the_engine_thinks_stops_the_events():
    stopped = asyncio.Event()

    async def thinking():
        yield b"data: 0\n\n"
        try:
            await asyncio.sleep(3600)  # no next token for a long time
            yield b"data: never\n\n"
        finally:
            stopped.set()

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    await asyncio.wait_for(EventStreamResponse(thinking())({"type": "http"}, receive, send), 5)
    assert stopped.is_set()
    assert [m.get("body") for m in sent if m["type"] == "http.response.body"] == [b"data: 0\n\n"]
