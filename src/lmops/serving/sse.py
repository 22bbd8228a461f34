"""A server-sent-events response that forwards each chunk as it comes and stops work on disconnect.

Unlike a plain StreamingResponse it listens for the client going away while the engine is
still thinking, and closes the chunk iterator at once, so an abandoned generation stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from lmops.serving.context import RawHeaders


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], raw_headers: RawHeaders | None = None):
        self._events = events
        self._headers = raw_headers or []
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
        raw += self._headers
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        pump = asyncio.ensure_future(self._pump(send))
        listen = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((pump, listen), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, listen):
                if not task.done():
                    task.cancel()
            await asyncio.gather(pump, listen, return_exceptions=True)
            await _close(self._events)
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            exc = pump.exception()
            if not isinstance(exc, OSError):
                raise exc  # type: ignore[misc]

    async def _pump(self, send: Send) -> None:
        async for event in self._events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _close(events: AsyncIterator[bytes]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # noqa: BLE001 - the stream is over either way
            pass
