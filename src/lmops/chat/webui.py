"""The web chat UI: a static page and its ES modules (no build step), served at ``/`` and ``/static/...``.

The page runs under a strict Content-Security-Policy: scripts and styles only from lmops itself (no inline
script or style), requests only to lmops, no frames. Model text reaches the page only as the chat API's
sanitized ``html`` (chat/markdown.py) or as plain text while an answer streams.
"""

from __future__ import annotations

import re
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

from lmops.protocol.errors import NotFound

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
ASSET = re.compile(r"^[a-z][a-z0-9_-]*\.(js|css)$")


def _media_type(suffix: str) -> str:
    return "text/javascript; charset=utf-8" if suffix == "js" else "text/css; charset=utf-8"


def _headers() -> dict[str, str]:
    return {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
            "cache-control": "no-cache"}


def _read(name: str) -> bytes:
    return (files("lmops.chat") / "web" / name).read_bytes()


def web_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def index() -> Response:
        return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=_headers())

    @router.get("/static/{name}")
    async def asset(name: str) -> Response:
        match = ASSET.match(name)
        if match is None:
            raise NotFound(f"No file '{name}'.")
        try:
            body = _read(name)
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"No file '{name}'.") from None
        return Response(body, media_type=_media_type(match.group(1)), headers=_headers())

    return router
