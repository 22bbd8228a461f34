"""/v1/images/generations and the signed image URLs lmops serves."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmops.api.deps import new_context, parse_tracked
from lmops.api.openapi_bodies import request_body
from lmops.images.service import ImagesService
from lmops.protocol.images import ImageGenerationRequest

_SIGNED = {"parameters": [
    {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"},
     "description": "when the URL expires, in seconds since the epoch"},
    {"name": "signature", "in": "query", "required": True, "schema": {"type": "string"},
     "description": "HMAC-SHA256 of the image id and expires, hex"}]}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_IMAGE: dict[int | str, dict[str, object]] = {
    200: {"description": "the image", "content": {t: _BINARY for t in ("image/png", "image/jpeg", "image/webp",
                                                                       "image/gif")}},
    403: {"description": "the signature is missing, forged or expired (OpenAI error envelope)"},
    404: {"description": "the image is no longer stored"}}


def images_router(images: ImagesService) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["images"])

    @router.post("/images/generations", openapi_extra=request_body(ImageGenerationRequest))
    async def generate_images(request: Request) -> Response:
        ctx = new_context(request, "images.generations")
        req = await parse_tracked(request, ImageGenerationRequest, ctx)
        return await images.generate(req, request, ctx)

    @router.get("/images/files/{image_id}", openapi_extra=_SIGNED, response_class=Response, responses=_IMAGE)
    async def image_file(request: Request, image_id: str) -> Response:
        """A generated image; no API key: the URL's signature is the permission, until it expires."""
        query = request.query_params
        return await images.file(image_id, query.get("expires"), query.get("signature"))

    return router
