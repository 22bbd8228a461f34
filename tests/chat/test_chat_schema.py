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


def test_a_page_of_messages_is_a_range_of_the_index(tmp_path):
    """SQLite's plan for a page: a search of (conversation_id, seq), no scan of the table and no sort."""
    import sqlite3

    from sqlalchemy.dialects import sqlite

    from lmops.chat.store import page_query

    url = f"sqlite:///{tmp_path / 'plan.db'}"
    upgrade(url)
    sql = str(page_query("conv_x", 500, 51).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with sqlite3.connect(tmp_path / "plan.db") as conn:
        plan = " / ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert "SEARCH chat_messages USING INDEX ix_chat_messages_conversation_id_seq (conversation_id=? AND seq<?)" \
        in plan, plan
    assert "TEMP B-TREE" not in plan and "SCAN" not in plan, plan
