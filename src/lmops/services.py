"""The composition root: the core, then each enabled capability on top of it, started and stopped together.

Nothing in the package imports this module except the roots that run it (``app.py``, ``cli.py``). A new
capability is one field here, built from the core and from the typed interfaces of the capabilities it
needs; ``capabilities`` lists every one that is enabled, in start order.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields

from lmops.access.capability import AccessCapability
from lmops.assistant.capability import AssistantCapability
from lmops.batch.capability import BatchCapability
from lmops.capability import Capability, SecretSource
from lmops.chat.capability import ChatCapability
from lmops.chat.service import ModelFilter, TeamModels
from lmops.config import Settings
from lmops.core import Core
from lmops.images.capability import ImagesCapability
from lmops.serving.context import Guard, OpenGuard
from lmops.store.database import create_engine


@dataclass
class Services:
    core: Core
    access: AccessCapability | None  # None when access control is off (settings.access.enabled)
    batch: BatchCapability
    images: ImagesCapability
    chat: ChatCapability
    assistant: AssistantCapability | None  # None unless assistant.function_model and default_model are set

    @classmethod
    def build(cls, settings: Settings, *, guard: Guard | None = None) -> "Services":
        """``guard``: admit requests with this guard instead of access control's (tests)."""
        db = create_engine(settings.database_url)
        access = AccessCapability(settings, db) if guard is None and settings.access.enabled else None
        core = Core.build(settings, db, guard or (access.guard if access else OpenGuard()))
        secret = server_secret(settings, access)
        chat = ChatCapability(core, team_models=_team_models(access) if access else None, secret=secret)
        images = ImagesCapability(core, secret)
        assistant = AssistantCapability(core, images) if settings.assistant.enabled else None
        return cls(core=core, access=access, batch=BatchCapability(core), images=images, chat=chat,
                   assistant=assistant)

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def capabilities(self) -> list[Capability]:
        """The enabled capabilities, in the order of the fields (start order; they stop in reverse)."""
        found = (getattr(self, f.name) for f in fields(self) if f.name != "core")
        return [c for c in found if c is not None]

    async def start(self, *, migrate: bool = True) -> None:
        """Migrate (unless told not to), start the core and then each capability."""
        await self.core.start(migrate=migrate)
        for capability in self.capabilities:
            await capability.start()

    async def stop(self) -> None:
        for capability in reversed(self.capabilities):
            await capability.stop()
        await self.core.stop()


def server_secret(settings: Settings, access: AccessCapability | None) -> SecretSource:
    """The server secret for capabilities that sign things (image URLs, chat's single sign-on state): access
    control's (loaded when it started, before them), else ``$LMOPS_SECRET`` (``access.secret_env``) if set, else
    None."""

    async def secret() -> bytes | None:
        if access is not None:
            return access.secret
        value = os.environ.get(settings.access.secret_env)
        return value.encode() if value else None

    return secret


def _team_models(access: AccessCapability) -> TeamModels:
    """Chat's narrow view of access control: which models a team's rules allow (its signed-in users have no key)."""

    async def allowed(team_id: str) -> ModelFilter:
        grant = await access.team_grants.get(team_id)
        limits = grant.team_limits if grant is not None else None
        return limits.allows if limits is not None else _any_model

    return allowed


def _any_model(name: str) -> bool:
    return True


def without_in_process_worker(settings: Settings) -> Settings:
    """The settings with the batch worker off: a CLI command that runs one of its own (or none)."""
    return settings.model_copy(update={"batch": settings.batch.model_copy(update={"worker_in_process": False})})


@asynccontextmanager
async def running(settings: Settings, *, migrate: bool = False) -> AsyncIterator[Services]:
    """Services built and started for a CLI command, stopped when it ends."""
    svc = Services.build(settings)
    await svc.start(migrate=migrate)
    try:
        yield svc
    finally:
        await svc.stop()
