"""The async database engine and the migration runner."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from lmops.config import async_database_url
from lmops.store.sqlite import BUSY_TIMEOUT_S, configure_sqlite

MIGRATIONS = Path(__file__).parent / "migrations"


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = async_database_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine.sync_engine, "connect", configure_sqlite)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", async_database_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` (blocking; call from a thread inside an event loop)."""
    command.upgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)


def current_revision(url: str) -> str | None:
    """The database's schema revision (blocking; from an event loop, await ``current_revision_async``)."""
    return asyncio.run(current_revision_async(url))


async def current_revision_async(url: str) -> str | None:
    """Read through the same async drivers as the server (asyncpg, aiosqlite): a production install has no
    synchronous PostgreSQL driver (psycopg is only a test dependency)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(async_database_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    finally:
        await engine.dispose()
