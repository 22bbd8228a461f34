"""Read a JSON request body and validate it into a protocol model."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from lmops.protocol.errors import ClientClosed, InvalidRequest, from_validation_error

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request) -> bytes:
    """The whole body (its size is bounded by ``BodyLimitMiddleware``, which answers 413 beyond the limit).

    A client that goes away before its body is whole (fewer bytes than its content-length, or a chunked body
    cut short) is a 499, recorded and logged as the client's doing: there is nobody left to answer.
    """
    try:
        return await request.body()
    except ClientDisconnect:
        raise ClientClosed("The client disconnected while sending the body.") from None


async def parse_json(request: Request, model: type[M]) -> M:
    return parse_body(await read_body(request), model)


def parse_body(raw: bytes, model: type[M]) -> M:
    """Validate a JSON body into ``model``; a clear 400 for anything else."""
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
