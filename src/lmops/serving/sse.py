"""A server-sent-events response that forwards chunks as they come (those ready together in one write)
and stops work on disconnect.

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
        """Send the events in bursts: those produced while the last write went out leave in one write.

        A task reads the events into a bounded queue (full: it stops reading, so a slow client slows the
        upstream read, not memory). An upstream that delivers many chunks in one network read — a loaded
        engine, or a fast one — costs one write to the client instead of one per chunk; one that sends a
        token at a time gets it forwarded at once, as before.
        """
        queue: asyncio.Queue[bytes | _End] = asyncio.Queue(maxsize=_QUEUED_EVENTS)
        reader = asyncio.ensure_future(_read_into(self._events, queue))
        try:
            while True:
                parts = [await queue.get()]
                while not queue.empty():
                    parts.append(queue.get_nowait())
                end = parts.pop() if isinstance(parts[-1], _End) else None
                if parts:
                    await send({"type": "http.response.body", "body": b"".join(parts),  # type: ignore[arg-type]
                                "more_body": True})
                if end is not None:
                    if end.error is not None:
                        raise end.error
                    break
        finally:
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)  # then the caller may close the events
        await send({"type": "http.response.body", "body": b"", "more_body": False})


_QUEUED_EVENTS = 256


class _End:
    """The end of the events, and the error that ended them, if any."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None):
        self.error = error


async def _read_into(events: AsyncIterator[bytes], queue: "asyncio.Queue[bytes | _End]") -> None:
    try:
        async for event in events:
            await queue.put(event)
    except Exception as exc:  # noqa: BLE001 - handed to the sender, which raises it
        await queue.put(_End(exc))
    else:
        await queue.put(_End())


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
