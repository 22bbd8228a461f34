"""The cross-cutting concerns of every route, as pure ASGI middleware (no per-request task or buffering):
request ids and the last line of defence against a traceback, one log line per request, and the body limit.
CORS is Starlette's own ``CORSMiddleware``; ``lmops.app`` stacks them all around every route.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmops.ids import new_id
from lmops.observability.logging import request_fields_var, request_id_var
from lmops.protocol.errors import APIError, InvalidRequest, PayloadTooLarge, error_envelope

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


async def send_error(send: Send, error: APIError, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with ``error`` in the OpenAI envelope (for middleware, before the app has started a response)."""
    headers = [(b"content-type", b"application/json"), *(extra_headers or [])]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(error.envelope())})


class HTTPMiddleware:
    """A pure ASGI middleware that acts on HTTP requests (``handle``) and passes anything else through."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestIdMiddleware(HTTPMiddleware):
    """Give every request an id (or keep the caller's ``x-request-id``) and return it as a header; answer a
    500 in the OpenAI envelope, never a traceback, when the app fails before its response started."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:128]
                break
        if not rid:
            rid = new_id("req_")
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


class AccessLogMiddleware(HTTPMiddleware):
    """One log line per request, when its response ends: method, path, status and latency, plus what the
    inference path adds for its requests (model, replica, tokens: ``request_fields_var``)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        token = request_fields_var.set(fields)
        status = 500  # until the app answers: an exception escaping it becomes a 500 further out

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            request_fields_var.reset(token)
            status = int(fields.get("status", status))  # a stream that failed after its 200 started
            level = logging.WARNING if status >= 500 else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "request finished", extra={
                    **fields, "method": scope["method"], "path": scope["path"], "status": status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3)})


class BodyLimitMiddleware(HTTPMiddleware):
    """Refuse a request body over the limit with a 413: at once when its ``content-length`` says so, else as
    soon as the bytes received pass it (a chunked body). Multipart uploads (``/v1/files``, enrichment files)
    have their own, larger limit."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_upload_bytes: int):
        super().__init__(app)
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes
        declared = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value
            elif key == b"content-type" and value.startswith(b"multipart/form-data"):
                limit = self.max_upload_bytes
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await send_error(send, InvalidRequest("Invalid Content-Length header."))
                return
            if size > limit:
                await send_error(send, PayloadTooLarge(f"Request body is {size} bytes; the limit is {limit} bytes."))
                return
            await self.app(scope, receive, send)  # the server delivers no more than the declared length
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            return message

        await self.app(scope, counting_receive, send)
