"""The image tool: an image made by lmops's own image generation (``ImagesService.generate_for``), in process.

The call is admitted, routed, recorded and billed for the turn's caller like ``POST /v1/images/generations``
(endpoint ``assistant.image``). Its result is the image itself: ``images`` holds its signed URL, relative
(``/v1/images/files/<id>?expires=...&signature=...``, valid for ``images.url_ttl_seconds``), and ``text`` the
markdown image the user is answered with, as it is (no model writes image links: ``history.clean_history``
takes them out of what the default model reads).
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from lmops.assistant.tools.base import Caller, Tool, ToolError, ToolResult, one_string_parameter
from lmops.protocol.errors import APIError, ModelNotFound
from lmops.serving.context import RequestContext
from lmops.serving.virtual import Admit

IMAGE_ENDPOINT = "assistant.image"  # request records of the image tool's generations
_NOT_IN_ALT = re.compile(r"[\[\]()!\\`<>*_]+")
ALT_LENGTH = 100


class ImageMaker(Protocol):
    """lmops's image generation, as the tool needs it (``ImagesService``)."""

    async def generate_for(self, model: str, prompt: str, size: str | None, ctx: RequestContext,
                           admit: Admit) -> list[str]:
        """Relative signed URLs of the images made for ``prompt``; an ``APIError`` when refused or failed."""
        ...


class ImageTool(Tool):
    name = "image"
    description = ("Generate an image (a picture, drawing, photo, illustration) from a description of it. Call it "
                   "only when the user asks for an image to be made.")

    def __init__(self, model: str, images: ImageMaker | None, size: str | None = None):
        self.model = model
        self.size = size
        self.images = images
        self.parameters: dict[str, Any] = one_string_parameter(
            "prompt", 1000, "what the image shows, in detail, in English")

    async def run(self, args: dict[str, Any]) -> ToolResult:
        return await self.run_for(args, None)

    async def run_for(self, args: dict[str, Any], caller: Caller | None) -> ToolResult:
        prompt = " ".join(str(args["prompt"]).split())
        if not prompt:
            raise ToolError("no description of the image was given")
        if self.images is None or caller is None:
            raise ToolError("the image tool is not configured (lmops's image generation is not available here)")
        try:
            urls = await self.images.generate_for(self.model, prompt, self.size, caller.inner(IMAGE_ENDPOINT),
                                                  caller.admit)
        except ModelNotFound:
            raise ToolError(f"the image tool is not configured: there is no image model named {self.model!r}") \
                from None
        except APIError as exc:
            raise ToolError(f"the image model {self.model} failed: {exc.message.rstrip('.')}") from None
        alt = image_alt(prompt)
        return ToolResult(text="\n\n".join(f"![{alt}]({url})" for url in urls), source=f"image model {self.model}",
                          images=urls)


def image_alt(prompt: str) -> str:
    """The prompt as a markdown image's alt text: one line, without the characters markdown would read."""
    alt = " ".join(_NOT_IN_ALT.sub(" ", prompt).split())
    return alt if len(alt) <= ALT_LENGTH else alt[:ALT_LENGTH - 1].rstrip() + "\u2026"
