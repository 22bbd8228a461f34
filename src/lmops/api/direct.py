"""The inference routes served straight from the middleware stack, without FastAPI's router.

Every request, these included, passes the same middleware (``lmops.app``: request id, log line, CORS, body
limit, and FastAPI's own outer layers). Only for an exact method and path of the inference routes does this
innermost middleware call the endpoint itself instead of handing the request to FastAPI's router, route,
dependency solver and exception layers, turning an exception into a response with the app's exception
handlers as FastAPI would. Those layers cost about as much CPU per request as lmops's own work on an
inference call (docs/benchmarks.md, gateway overhead). The routes stay registered with FastAPI too (OpenAPI,
and any request that does not match exactly).

Endpoints served here must not rely on FastAPI dependencies or parameters: access control belongs in the
Guard, which the inference service calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class DirectRoutesMiddleware:
    def __init__(self, app: ASGIApp, *, routes: Mapping[tuple[str, str], Endpoint]):
        self.app = app
        self.routes = dict(routes)  # (method, path) -> endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and not scope.get("root_path"):
            endpoint = self.routes.get((scope["method"], scope["path"]))
        if endpoint is None:
            await self.app(scope, receive, send)
            return
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


def _exception_handler(app: Any, exc: Exception) -> Handler | None:
    handlers = getattr(app, "exception_handlers", {})
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
