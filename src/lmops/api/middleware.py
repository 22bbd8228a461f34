"""Request ids and the last line of defence: no request ever gets a 500 with a traceback."""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmops.ids import sortable_hex
from lmops.observability.logging import request_id_var
from lmops.protocol.errors import error_envelope

log = logging.getLogger("lmops.http")


def with_header(start: Message, name: bytes, value: bytes) -> Message:
    """A response-start message with the header ``name`` (lower-case) added, unless the response sets it.

    The app's responses come from Starlette, which lower-cases header names, so a C-level ``dict`` of the
    raw pairs answers "is it there" without lower-casing every name of every response in Python.
    """
    headers = start.get("headers", ())
    if name in dict(headers):
        return start
    return {**start, "headers": [*headers, (name, value)]}


class RequestIdMiddleware:
    """Give every request an id (or keep the caller's ``x-request-id``) and return it as a header."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:128]
                break
        if not rid:
            rid = "req_" + sortable_hex()
        token = request_id_var.set(rid)
        rid_bytes = rid.encode("latin-1")
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = with_header(message, b"x-request-id", rid_bytes)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if not started:
                body = orjson.dumps(error_envelope("The server failed to process the request.", "server_error",
                                                   None, "internal_error"))
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"), (b"x-request-id", rid_bytes)]})
                await send({"type": "http.response.body", "body": body})
        finally:
            request_id_var.reset(token)
