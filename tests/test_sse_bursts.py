"""The SSE response sends what the events produced meanwhile in one write, and still forwards a trickle at once."""

from __future__ import annotations

import asyncio

import pytest

from lmops.serving.sse import EventStreamResponse


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

    async def run(self, events) -> list[dict]:
        """Serve ``events``; the body messages sent (also kept when the response raises)."""
        await asyncio.wait_for(EventStreamResponse(events)({"type": "http"}, self.receive, self.send), 5)
        return self.bodies

    @property
    def bodies(self) -> list[dict]:
        return [m for m in self.sent if m["type"] == "http.response.body"]


async def _run(events) -> list[dict]:
    return await _Client().run(events)


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

    client = _Client()
    with pytest.raises(RuntimeError, match="engine gone"):
        await client.run(broken())
    assert [m.get("body") for m in client.bodies] == [b"data: 0\n\n"]


async def test_a_client_leaving_while_the_engine_thinks_stops_the_events():
    stopped = asyncio.Event()

    async def thinking():
        yield b"data: 0\n\n"
        try:
            await asyncio.sleep(3600)  # no next token for a long time
            yield b"data: never\n\n"
        finally:
            stopped.set()

    bodies = await _Client(leaves_after=0.05).run(thinking())
    assert stopped.is_set()
    assert [m.get("body") for m in bodies] == [b"data: 0\n\n"]
