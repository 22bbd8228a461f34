"""Serve the hot inference routes straight from the ASGI call, without FastAPI's per-request layers.

FastAPI's router, its body-limit, exception and exit-stack middlewares and its dependency
solver cost about as much CPU per request as everything lmops itself does on an inference
call. The inference endpoints need none of it: they take the ``Request``, parse and validate
the body themselves and return a ``Response``. This middleware, the innermost of the app's
own middlewares (so ``RequestIdMiddleware`` and anything added later still wrap it), calls
those same endpoint functions directly for an exact method and path, and turns exceptions
into responses with the app's own exception handlers, as FastAPI would. The routes stay
registered with FastAPI too (OpenAPI, and any request that does not match exactly).

Endpoints served here must not rely on FastAPI dependencies or parameters: access control
belongs in the Guard, which the inference service calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class DirectRoutes:
    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], Endpoint]):
        self.app = app
        self.routes = dict(routes)  # (method, path) -> endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            endpoint = self.routes.get((scope["method"], scope["path"]))
            if endpoint is not None:
                await self._serve(endpoint, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
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
