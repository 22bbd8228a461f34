"""Helpers shared by the routers: the app's core, a fresh request context, JSON responses."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from lmops.api.bodies import parse_body, read_body
from lmops.core import Core
from lmops.observability.logging import request_id_var
from lmops.protocol.errors import APIError
from lmops.serving.context import RequestContext

M = TypeVar("M", bound=BaseModel)


def core(request: Request) -> Core:
    """The core of the app serving ``request`` (set by ``lmops.app.create_app``)."""
    return request.app.state.core


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def new_context(request: Request, endpoint: str) -> RequestContext:
    return RequestContext(request_id=request_id_var.get() or "-", endpoint=endpoint)


async def parse_tracked(request: Request, model: type[M], ctx: RequestContext) -> M:
    """Parse the body; a request refused here still leaves its record and metrics."""
    svc = core(request)
    try:
        raw = await read_body(request)
        ctx.body_bytes = len(raw)
        return parse_body(raw, model)
    except APIError as exc:
        svc.inference.finish(ctx, exc)
        raise
