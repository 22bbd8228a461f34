"""Serve the hot inference routes straight from the ASGI call, without FastAPI's per-request layers.

FastAPI's telemetry check (several environment lookups per request), its error, body-limit,
exception and exit-stack middlewares, its router and its dependency solver cost about as much
CPU per request as everything lmops itself does on an inference call. The inference endpoints
need none of it: they take the ``Request``, parse and validate the body themselves and return
a ``Response``. ``Gateway`` (the app class) hands an exact method and path to ``DirectRoutes``,
wrapped in ``RequestIdMiddleware`` like every other route; it calls those same endpoint
functions directly and turns exceptions into responses with the app's own exception handlers,
as FastAPI would. The routes stay registered with FastAPI too (OpenAPI, and any request that
does not match exactly).

Endpoints served here must not rely on FastAPI dependencies or parameters: access control
belongs in the Guard, which the inference service calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from lmops.api.middleware import RequestIdMiddleware

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class DirectRoutes:
    """An ASGI app of exact (method, path) routes; ``Gateway`` sends it only requests that match."""

    def __init__(self, routes: Mapping[tuple[str, str], Endpoint]):
        self.routes = dict(routes)  # (method, path) -> endpoint

    def matches(self, scope: Scope) -> bool:
        return (scope["method"], scope["path"]) in self.routes and not scope.get("root_path")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.routes[(scope["method"], scope["path"])]
        scope["endpoint"] = endpoint
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = _exception_handler(scope["app"], exc)
            if handler is None:
                raise  # RequestIdMiddleware answers 500 with the OpenAI envelope
            response = await handler(request, exc)
        await response(scope, receive, send)


class Gateway(FastAPI):
    """FastAPI, except that requests for the direct routes skip its per-request layers."""

    def __init__(self, *, direct_routes: Mapping[tuple[str, str], Endpoint], **kwargs: Any):
        super().__init__(**kwargs)
        self.direct = DirectRoutes(direct_routes)
        self._direct_stack: ASGIApp = RequestIdMiddleware(self.direct)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.root_path and self.direct.matches(scope):
            scope["app"] = self
            await self._direct_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _exception_handler(app: Any, exc: Exception) -> Handler | None:
    handlers = getattr(app, "exception_handlers", {})
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
