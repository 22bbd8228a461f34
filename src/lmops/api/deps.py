"""Helpers shared by the routers: the app's services and a fresh request context."""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from lmops.api.bodies import parse_body, read_body
from lmops.observability.logging import request_id_var
from lmops.protocol.errors import APIError
from lmops.serving.context import RequestContext

M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:
    from lmops.services import Services


def services(request: Request) -> "Services":
    return request.app.state.services


def new_context(request: Request, endpoint: str) -> RequestContext:
    return RequestContext(request_id=request_id_var.get() or "-", endpoint=endpoint)


async def parse_tracked(request: Request, model: type[M], ctx: RequestContext) -> M:
    """Parse the body; a request refused here still leaves its record and metrics."""
    svc = services(request)
    try:
        raw = await read_body(request, svc.settings.server.max_body_bytes)
        ctx.body_bytes = len(raw)
        return parse_body(raw, model)
    except APIError as exc:
        svc.inference.finish(ctx, exc)
        raise
