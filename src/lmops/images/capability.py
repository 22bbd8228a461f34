"""Image generation as a capability (config section ``images``): built from the core and one function that
gives the server secret (image URLs are signed with a key derived from it)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from fastapi import APIRouter

from lmops.capability import SecretSource
from lmops.core import Core
from lmops.images.routes import images_router
from lmops.images.service import ImagesService
from lmops.images.signing import UrlSigner, signing_key
from lmops.images.store import ImageStore

log = logging.getLogger("lmops.images")



class ImagesCapability(ImagesService):
    config_section: ClassVar[str] = "images"

    def __init__(self, core: Core, secret: SecretSource):
        settings = core.settings
        cfg = settings.images
        root = Path(cfg.data_dir or settings.batch.data_dir) / "images"
        super().__init__(core, ImageStore(root), cfg.max_image_bytes, settings.server.public_url)
        self._secret = secret

    def routers(self) -> Sequence[APIRouter]:
        return [images_router(self)]

    async def start(self) -> None:
        secret = await self._secret()
        if secret is None:
            if any(m.kind == "image" for m in self.core.settings.models):
                log.warning("no server secret ($%s): image URLs are signed with a key made up by this process, "
                            "so they stop working when it restarts and other gateway processes refuse them; set "
                            "$%s", self.core.settings.access.secret_env, self.core.settings.access.secret_env)
            secret = secrets.token_bytes(32)
        self.signer = UrlSigner(signing_key(secret), self.core.settings.images.url_ttl_seconds)

    async def stop(self) -> None:
        return None
