"""Access control as a capability: the access service with its admin routes (config section ``access``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from fastapi import APIRouter

from lmops.access.routes import admin_router
from lmops.access.service import AccessService


class AccessCapability(AccessService):
    config_section: ClassVar[str] = "access"

    def routers(self) -> Sequence[APIRouter]:
        return [admin_router(self)]
