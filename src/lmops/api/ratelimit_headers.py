"""Add the ``x-ratelimit-*`` headers the access guard computed to every response, streamed or not."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmops.access.guard import HEADERS_STATE
from lmops.api.middleware import with_headers


class RateLimitHeadersMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get("state", {}).get(HEADERS_STATE)
                if extra:
                    message = with_headers(message, [(k.encode(), v.encode()) for k, v in extra.items()])
            await send(message)

        await self.app(scope, receive, send_with_headers)
