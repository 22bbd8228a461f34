"""A server-sent-events response that forwards events as they come and stops work on disconnect.

Unlike a plain StreamingResponse it listens for the client going away while the engine is
still thinking, and stops the events at once, so an abandoned generation stops. Each event it is
given goes out in one ``send``: the inference layer hands over the chunks an engine produced
together (one network read of an upstream) as one event string, so a burst costs one write.
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
        self._extra_headers = raw_headers or []
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
        raw += self._extra_headers
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        # The client leaving cancels this task where it waits (mostly on the engine's next event); the events,
        # an async generator, see that as a CancelledError at their own await and stop there. No task and no
        # queue per stream, nor a hand-over per event, as a reader task would need.
        loop = asyncio.get_running_loop()  # once: each lookup of the running loop costs a getpid() system call
        task = asyncio.current_task(loop)
        assert task is not None
        streaming, left = True, False

        def client_left(listener: asyncio.Future[None]) -> None:
            nonlocal left
            if listener.cancelled():
                return
            listener.exception()  # retrieved: a receive that broke counts as the client leaving
            if streaming:
                left = True
                task.cancel()

        listen = loop.create_task(_wait_disconnect(receive))
        listen.add_done_callback(client_left)
        try:
            async for event in self._events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            streaming = False  # all sent: from here on, a disconnect cancels nothing (a cancel asked while this
            # task waited inside the loop was raised there, at that await)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not left:
                raise  # the server's own cancellation (shutdown), not the client's departure
            task.uncancel()
        except OSError:
            pass  # the client went away mid-write
        finally:
            streaming = False
            listen.cancel()
            await _close(self._events)


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
