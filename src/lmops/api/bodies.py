"""Read a JSON request body under a size limit and validate it into a protocol model."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from lmops.protocol.errors import InvalidRequest, PayloadTooLarge, from_validation_error

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest("Invalid Content-Length header.") from None
        if size > max_bytes:
            raise PayloadTooLarge(f"Request body is {size} bytes; the limit is {max_bytes} bytes.")
        return await request.body()
    parts: list[bytes] = []
    total = 0
    try:
        async for part in request.stream():
            total += len(part)
            if total > max_bytes:
                raise PayloadTooLarge(f"Request body exceeds the limit of {max_bytes} bytes.")
            parts.append(part)
    except ClientDisconnect:
        raise InvalidRequest("The client disconnected while sending the body.") from None
    return b"".join(parts)


async def parse_json(request: Request, model: type[M], max_bytes: int) -> M:
    return parse_body(await read_body(request, max_bytes), model)


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
