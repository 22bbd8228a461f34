"""Image generation through the router, and the signed-URL file route's logic.

A request is admitted by the guard like a chat request (key, model rules, limits, a budget reservation of ``n``
images at the model's price), sent to one of the image model's replicas (failover as for any model), and its
images are stored by lmops; the answer carries them as ``b64_json`` or as signed lmops URLs. The request leaves
one record (endpoint ``images.generations``), billed per image when priced. The assistant's image tool asks
through ``generate_for``, the same path, admitted for its caller.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from lmops.core import Core
from lmops.engines.base import Body, Engine
from lmops.images.signing import UrlSigner
from lmops.images.store import ImageStore, StoredImage, image_format
from lmops.protocol.errors import APIError, InvalidRequest, NotFound, UpstreamError, from_validation_error
from lmops.protocol.images import ImageGenerationRequest
from lmops.routing.router import Routed
from lmops.serving.context import RequestContext
from lmops.serving.inference import address
from lmops.serving.virtual import Admit

log = logging.getLogger("lmops.images")


class ImagesService:
    def __init__(self, core: Core, store: ImageStore, max_image_bytes: int, public_url: str | None):
        self.core = core
        self.store = store
        self.max_image_bytes = max_image_bytes
        self.public_url = public_url
        self.signer: UrlSigner | None = None  # set at start, once the server secret is known

    async def generate(self, req: ImageGenerationRequest, http: Request, ctx: RequestContext) -> Response:
        guard = self.core.guard

        async def admit(call: RequestContext) -> None:
            await guard.admit(http, call)

        answer, stored = await self._generate(req, ctx, admit)
        result = self._answer(answer, stored, req.response_format or "url", self.public_url
                              or str(http.base_url).rstrip("/"))
        response = Response(orjson.dumps(result), media_type="application/json")
        if ctx.rate_headers:
            response.raw_headers += ctx.rate_headers
        return response

    async def generate_for(self, model: str, prompt: str, size: str | None, ctx: RequestContext,
                           admit: Admit) -> list[str]:
        """One image for a caller inside lmops (the assistant's image tool), admitted with ``admit``, recorded and
        billed like a ``/v1`` request: its signed URL, relative (``/v1/images/files/...``), as the chat shows it."""
        try:
            req = ImageGenerationRequest.model_validate({"model": model, "prompt": prompt, "size": size})
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        _, stored = await self._generate(req, ctx, admit)
        return [self.url("", image.id) for image in stored]

    async def _generate(self, req: ImageGenerationRequest, ctx: RequestContext,
                        admit: Admit) -> tuple[Body, list[StoredImage]]:
        """Admit, route and store a generation; the request is finished (recorded, billed) however it ends."""
        core = self.core
        ctx.choices = req.count()
        try:
            address(ctx, req.model, core.router.find(req.model))
            await admit(ctx)  # first: who may ask which models exist
            target = core.router.resolve(req.model)
            if target.config.kind != "image":
                raise InvalidRequest(f"The model '{req.model}' does not generate images; ask an image model.",
                                     param="model", code="unsupported_model_capability")
            body = req.to_wire()
            body["model"] = target.upstream_name
            routed = Routed()
            try:
                answer = await core.router.call(req.model, _images_call, body, routed)
            finally:
                ctx.replica = routed.replica
            images = self._decode(answer)
            stored = await self.store.save(images, {"model": ctx.public_model, "request_id": ctx.request_id,
                                                    "team_id": ctx.principal.team_id if ctx.principal else None})
            ctx.images = min(len(stored), ctx.choices)  # an upstream answering more than n bills n
        except APIError as exc:
            core.inference.finish(ctx, exc)
            for name, value in ctx.rate_headers or ():
                exc.headers.setdefault(name.decode(), value.decode())
            raise
        except Exception as exc:
            log.exception("the image request failed")
            failure = APIError("The server failed to process the request.", code="internal_error")
            core.inference.finish(ctx, failure)
            raise failure from exc
        core.inference.finish(ctx)
        return answer, stored

    def _decode(self, answer: Body) -> list[tuple[bytes, str]]:
        """Each image's bytes and format; a 502 for an answer without images or with anything else in them."""
        items = answer["data"]  # a list of objects, each with b64_json (checked by the engine)
        if not items:
            raise UpstreamError("The image backend answered without any image.")
        images = []
        for item in items:
            try:
                data = base64.b64decode(item["b64_json"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise UpstreamError("The image backend answered with an image that is not valid base64.") from None
            if len(data) > self.max_image_bytes:
                raise UpstreamError(f"The image backend answered with an image of {len(data)} bytes, more than the "
                                    f"{self.max_image_bytes} allowed.")
            fmt = image_format(data)
            if fmt is None:
                raise UpstreamError("The image backend answered with data that is not a PNG, JPEG, WebP or GIF image.")
            images.append((data, fmt))
        return images

    def _answer(self, answer: Body, stored: list[StoredImage], response_format: str, base: str) -> Body:
        """The OpenAI images response: the upstream's fields (usage, size, quality...), lmops's images."""
        result: Body = {k: v for k, v in answer.items() if k != "data"}
        if not isinstance(result.get("created"), int):
            result["created"] = int(time.time())
        data = []
        for item, image in zip(answer["data"], stored, strict=True):
            out: dict[str, Any] = ({"b64_json": item["b64_json"]} if response_format == "b64_json"
                                   else {"url": self.url(base, image.id)})
            if isinstance(item.get("revised_prompt"), str):
                out["revised_prompt"] = item["revised_prompt"]
            data.append(out)
        result["data"] = data
        return result

    def url(self, base: str, image_id: str) -> str:
        """The signed URL of an image below ``base`` (the server's address; "" for a relative one)."""
        assert self.signer is not None, "the images capability was not started"
        return f"{base}/v1/images/files/{image_id}?{self.signer.query(image_id)}"

    async def file(self, image_id: str, expires: str | None, signature: str | None) -> Response:
        """The image behind a signed URL: 403 for a forged or expired signature, 404 for an image that is gone."""
        assert self.signer is not None, "the images capability was not started"
        left = self.signer.check(image_id, expires, signature)
        image = self.store.find(image_id)
        data = await self.store.read(image) if image is not None else None
        if image is None or data is None:
            raise NotFound(f"No image {image_id!r} is stored here.", param="image_id")
        return Response(data, media_type=image.content_type,
                        headers={"cache-control": f"private, max-age={left}", "x-content-type-options": "nosniff"})


def _images_call(engine: Engine, body: Body) -> Any:
    return engine.images(body)
