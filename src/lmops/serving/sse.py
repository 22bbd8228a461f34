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
        queue: asyncio.Queue[bytes | _End] = asyncio.Queue(maxsize=_QUEUED_EVENTS)
        reader = asyncio.ensure_future(_read_into(self._events, queue))
        listen = asyncio.ensure_future(_wait_disconnect(receive))
        listen.add_done_callback(lambda _: queue.full() or queue.put_nowait(_GONE))
        try:
            if await _send_bursts(queue, send, listen):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            for task in (reader, listen):
                if not task.done():
                    task.cancel()
            await asyncio.gather(reader, listen, return_exceptions=True)  # then the events may be closed
            await _close(self._events)


_QUEUED_EVENTS = 256


class _End:
    """The end of the events, and the error that ended them, if any."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None):
        self.error = error


_GONE = _End()  # put by the disconnect listener: the client left


async def _read_into(events: AsyncIterator[bytes], queue: "asyncio.Queue[bytes | _End]") -> None:
    """Move the events into the queue (a full queue stops the reading, so a slow client slows the upstream
    read, not memory), then their end."""
    try:
        async for event in events:
            if queue.full():
                await queue.put(event)
            else:
                queue.put_nowait(event)  # no coroutine per event while the client keeps up
    except Exception as exc:  # noqa: BLE001 - handed to the sender, which raises it
        await queue.put(_End(exc))
    else:
        await queue.put(_End())


async def _send_bursts(queue: "asyncio.Queue[bytes | _End]", send: Send, listen: asyncio.Future[None]) -> bool:
    """Send the queued events, those that arrived together in one write; True when they all went out,
    False when the client left first.

    An upstream that delivers many chunks in one network read (a loaded engine, or a fast one) costs one
    write to the client instead of one per chunk; one that sends a token at a time has it forwarded at once.
    """
    while True:
        parts = [await queue.get()]
        while not queue.empty():
            parts.append(queue.get_nowait())
        ends = [part for part in parts if isinstance(part, _End)]
        if listen.done():
            return False
        events = [part for part in parts if not isinstance(part, _End)] if ends else parts
        if events:
            await send({"type": "http.response.body", "body": b"".join(events),  # type: ignore[arg-type]
                        "more_body": True})
        if ends:
            if ends[0].error is not None:
                raise ends[0].error
            return True


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
