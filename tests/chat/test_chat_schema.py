"""Migration 0007 creates the chat tables exactly as the models declare them, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from lmops.store.database import command, alembic_config, upgrade
from lmops.store.schema import metadata


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chat.db'}"
    return request.getfixturevalue("pg_url")


def _sync(url: str) -> str:
    return url.replace("+asyncpg", "").replace("+aiosqlite", "").replace("postgresql://", "postgresql+psycopg://", 1)


def test_chat_tables_match_their_models_and_downgrade(database_url):
    upgrade(database_url)
    engine = create_engine(_sync(database_url))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        chat = [d for d in diff if "chat_" in repr(d)]
        assert chat == []
    finally:
        engine.dispose()
    command.downgrade(alembic_config(database_url), "0006_crash_safe_batches")
    upgrade(database_url)
