"""An access service on its own migrated database, for tests and benchmarks that call the guard directly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from lmops.access.admin import AdminService
from lmops.access.service import AccessService
from lmops.config import Settings
from lmops.store.database import create_engine, upgrade_async


@asynccontextmanager
async def running_access(settings: Settings) -> AsyncIterator[tuple[AccessService, AdminService]]:
    """Migrate ``settings.database_url``, start the access service (no bootstrap key unless the settings ask
    for one), and stop it and its engine afterwards."""
    await upgrade_async(settings.database_url)
    db = create_engine(settings.database_url)
    access = AccessService(settings, db)
    try:
        await access.start()
        assert access.admin is not None
        yield access, access.admin
    finally:
        await access.stop()
        await db.dispose()
