"""A fake OpenAI-compatible image backend (follows the OpenAI images API, ``POST /v1/images/generations``, as of
openai-python 1.x: ``{"created", "data": [{"b64_json"} | {"url"}, "revised_prompt"?]}``).

It answers with real PNG images made here (``png()``: a solid colour, a different one per image of a request, of
the ``size`` asked for, else 8x8),
in base64, or as URLs it serves itself (``GET /files/<name>.png``) when asked for ``url`` or when ``answer_urls``
is set. ``/v1/models`` lists ``fake-image``. Switches for faults: ``fail`` (500), ``hang``, ``delay``,
``malformed`` (a body that is not JSON), ``answer`` (this JSON, whatever its shape), ``not_image`` (base64 of
something that is not an image). ``requests`` keeps each request's JSON body; ``images`` each PNG answered.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from lmops.testing.fake_openai import receive_body, serve_lifespan

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (240, 200, 30)]


def png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (220, 40, 40)) -> bytes:
    """A valid PNG of one colour (8-bit RGB, no interlace), made with zlib alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width  # filter type 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


@dataclass
class ImageBehaviour:
    fail: bool = False  # answer 500
    hang: bool = False  # never answer
    delay: float = 0.0
    malformed: bool = False  # answer 200 with a body that is not JSON
    answer: Any = None  # if set: the JSON every generation answers, whatever its shape
    not_image: bool = False  # b64_json that decodes to text
    answer_urls: bool = False  # answer with URLs even when asked for b64_json (as some backends do)
    revised_prompt: str | None = None  # added to every image, as dall-e-3 does


@dataclass
class FakeImages:
    """A bare ASGI app."""

    behaviour: ImageBehaviour = field(default_factory=ImageBehaviour)
    requests: list[dict[str, Any]] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    downloads: int = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        path = scope["path"]
        body = await receive_body(receive)
        if path.endswith("/models"):
            await _send(send, 200, orjson.dumps({"object": "list", "data": [
                {"id": "fake-image", "object": "model", "created": 0, "owned_by": "fake"}]}))
            return
        if path.startswith("/files/") and path[7:] in self.files:
            self.downloads += 1
            await _send(send, 200, self.files[path[7:]], b"image/png")
            return
        if not path.endswith("/images/generations") or scope["method"] != "POST":
            await _send(send, 404, orjson.dumps(_error("not found", "invalid_request_error")))
            return
        b = self.behaviour
        if b.hang:
            await asyncio.sleep(3600)
        if b.delay:
            await asyncio.sleep(b.delay)
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _send(send, 400, orjson.dumps(_error("We could not parse the JSON body of your request.",
                                                       "invalid_request_error")))
            return
        self.requests.append(req)
        if b.fail:
            await _send(send, 500, orjson.dumps(_error("fake image backend failure", "server_error")))
            return
        if b.malformed:
            await _send(send, 200, b'{"created": 1, "data": [{"b64_json": "iVBOR')
            return
        if b.answer is not None:
            await _send(send, 200, orjson.dumps(b.answer))
            return
        n = req.get("n") or 1
        start = len(self.images)
        width, height = _size(req.get("size"))
        made = [b"this is not an image" if b.not_image else png(width, height, COLOURS[(start + i) % len(COLOURS)])
                for i in range(n)]
        self.images.extend(made)
        data = []
        for image in made:
            if b.answer_urls or req.get("response_format") == "url":
                name = f"{len(self.files)}.png"
                self.files[name] = image
                host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode()
                item: dict[str, Any] = {"url": f"http://{host}/files/{name}"}
            else:
                item = {"b64_json": base64.b64encode(image).decode()}
            if b.revised_prompt is not None:
                item["revised_prompt"] = b.revised_prompt
            data.append(item)
        await _send(send, 200, orjson.dumps({"created": int(time.time()), "data": data}))


def _size(size: Any) -> tuple[int, int]:
    """The ``size`` asked for ("256x256"; at most 1024 a side), else 8x8."""
    if isinstance(size, str):
        width, _, height = size.partition("x")
        if width.isdigit() and height.isdigit() and 0 < int(width) <= 1024 and 0 < int(height) <= 1024:
            return int(width), int(height)
    return 8, 8


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


async def _send(send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
