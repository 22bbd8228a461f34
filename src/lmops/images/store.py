"""Generated images as files: ``<data_dir>/images/<id>.<png|jpeg|webp|gif>``, each with a JSON sidecar
``<id>.json`` (model, team, request id, creation time, content type, size). No database table."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# (file extension, content type) of each image format an image backend may answer with, by its first bytes
_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
_ID = re.compile(r"img_[0-9a-f]{32}")


def image_format(data: bytes) -> str | None:
    """The format of an image by its magic bytes (``png``, ``jpeg``, ``webp``, ``gif``), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return None


@dataclass(frozen=True)
class StoredImage:
    id: str
    path: Path
    content_type: str


class ImageStore:
    def __init__(self, root: Path):
        self.root = root

    def new_id(self) -> str:
        """Random (not time-ordered): an image id says nothing of when it was made or of its neighbours."""
        return f"img_{secrets.token_hex(16)}"

    async def save(self, images: list[tuple[bytes, str]], meta: dict[str, Any]) -> list[StoredImage]:
        """Write each (bytes, format) with its sidecar, off the event loop."""
        return await asyncio.to_thread(self._save, images, meta)

    def _save(self, images: list[tuple[bytes, str]], meta: dict[str, Any]) -> list[StoredImage]:
        self.root.mkdir(parents=True, exist_ok=True)
        stored = []
        for data, fmt in images:
            image_id = self.new_id()
            image = StoredImage(image_id, self.root / f"{image_id}.{fmt}", _FORMATS[fmt])
            sidecar = {**meta, "id": image.id, "content_type": image.content_type, "bytes": len(data),
                       "created": int(time.time())}
            _write(self.root / f"{image.id}.json", orjson.dumps(sidecar))
            _write(image.path, data)
            stored.append(image)
        return stored

    def find(self, image_id: str) -> StoredImage | None:
        """The stored image ``image_id``, or None (also for anything that is not an image id)."""
        if not _ID.fullmatch(image_id):
            return None
        for fmt, content_type in _FORMATS.items():
            path = self.root / f"{image_id}.{fmt}"
            if path.is_file():
                return StoredImage(image_id, path, content_type)
        return None

    async def read(self, image: StoredImage) -> bytes | None:
        try:
            return await asyncio.to_thread(image.path.read_bytes)
        except FileNotFoundError:
            return None


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` whole or not at all (a temporary file renamed), readable by lmops's user only."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
    os.replace(tmp, path)
