"""The key-hashing secret lives outside the database (access/secret.py): SQLite makes a private file beside the
database and reads it back on every start; PostgreSQL takes it from $LMOPS_SECRET or a secret file, never from the
database; an install whose secret an earlier lmops kept in the database keeps its keys while the secret moves out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from lmops.access.secret import SecretError, secret_bytes
from lmops.access.store import SECRET_NAME, AccessStore
from lmops.access.tables import ServerSecret
from lmops.cli import app as cli
from lmops.config import Settings, load_settings
from lmops.store.database import create_engine, upgrade_async
from lmops.testing.access import running_access
from lmops.testing.settings import make_settings

MODELS = [{"name": "fake", "engine": "openai", "replicas": ["http://127.0.0.1:9/v1"]}]
ACCESS = {"enabled": True, "bootstrap": False}


@pytest.fixture(autouse=True)
def no_secret_in_the_environment(monkeypatch):
    monkeypatch.delenv("LMOPS_SECRET", raising=False)
    monkeypatch.delenv("LMOPS_SECRET_FILE", raising=False)


def sqlite_settings(folder: Path, **access: Any) -> Settings:
    return make_settings(folder, MODELS, access={**ACCESS, **access})


def plain_settings(url: str, **access: Any) -> Settings:
    """Settings as a user writes them (make_settings would add a secret file on PostgreSQL)."""
    return load_settings(None, database_url=url, models=MODELS, access={**ACCESS, **access})


def issue(settings: Settings) -> tuple[str, str]:
    """A new key's text and prefix, stored under the secret this start reads."""
    async def go() -> tuple[str, str]:
        async with running_access(settings) as (_, admin):
            team = await admin.create_team(None, f"team-{secrets.token_hex(3)}")
            row, text = await admin.issue_key(None, team["id"])
            return text, row["prefix"]

    return asyncio.run(go())


def verifies(settings: Settings, key: tuple[str, str]) -> bool:
    """Whether a start of these settings matches ``key`` against its stored hash."""
    async def go() -> bool:
        async with running_access(settings) as (access, _):
            grant = await access.store.grant(key[1])
            assert grant is not None and access.guard.hasher is not None
            return access.guard.hasher.matches(key[0], grant.hash)

    return asyncio.run(go())


def database_secret(url: str, plant: bytes | None = None) -> bytes | None:
    """The secret in the database's table server_secrets (after writing ``plant`` there, as earlier lmops did)."""
    async def go() -> bytes | None:
        await upgrade_async(url)
        db = create_engine(url)
        try:
            if plant is not None:
                async with db.begin() as conn:
                    await conn.execute(insert(ServerSecret).values(name=SECRET_NAME, value=plant.hex()))
            return await AccessStore(db).legacy_secret()
        finally:
            await db.dispose()

    return asyncio.run(go())


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sqlite_makes_a_private_secret_file_beside_the_database_and_reads_it_back(tmp_path):
    settings = sqlite_settings(tmp_path)
    key = issue(settings)
    secret_file = tmp_path / "lmops.secret"
    assert private(secret_file)
    secret = secret_file.read_text()
    assert verifies(settings, key)  # a restart: the same secret, read from the file
    assert secret_file.read_text() == secret
    assert database_secret(settings.database_url) is None  # nothing of it in the database


def test_an_earlier_install_keeps_its_keys_and_its_secret_leaves_the_database(tmp_path, monkeypatch):
    settings = sqlite_settings(tmp_path)
    old = secrets.token_bytes(32)  # what an earlier lmops generated into the database
    monkeypatch.setenv("LMOPS_SECRET", f"hex:{old.hex()}")  # the same bytes: keys stored as that lmops did
    key = issue(settings)
    monkeypatch.delenv("LMOPS_SECRET")
    database_secret(settings.database_url, plant=old)

    assert verifies(settings, key)  # the upgraded start
    secret_file = tmp_path / "lmops.secret"
    assert secret_file.read_text() == f"hex:{old.hex()}\n" and private(secret_file)
    assert database_secret(settings.database_url) is None  # moved out, not copied
    assert verifies(settings, key)  # and every start after


def test_keys_without_their_secret_file_stop_the_start(tmp_path):
    settings = sqlite_settings(tmp_path)
    key = issue(settings)
    (tmp_path / "lmops.secret").unlink()
    with pytest.raises(SecretError, match="holds API keys but the secret file .* is missing"):
        verifies(settings, key)
    assert not (tmp_path / "lmops.secret").exists()  # no new secret under which every key would fail


def test_a_database_copy_that_differs_from_the_secret_in_use_is_left_alone(tmp_path, monkeypatch, caplog):
    settings = sqlite_settings(tmp_path)
    old = secrets.token_bytes(32)
    database_secret(settings.database_url, plant=old)
    monkeypatch.setenv("LMOPS_SECRET", secrets.token_hex(32))
    with caplog.at_level(logging.WARNING, logger="lmops.access"):
        issue(settings)
    assert "lmops keys export-secret FILE" in caplog.text
    assert database_secret(settings.database_url) == old  # its keys can still be saved


def test_a_secret_file_holds_the_same_text_as_the_variable(tmp_path, monkeypatch):
    settings = sqlite_settings(tmp_path)
    text = secrets.token_urlsafe(24)
    monkeypatch.setenv("LMOPS_SECRET", text)
    key = issue(settings)
    monkeypatch.delenv("LMOPS_SECRET")
    given = tmp_path / "mounted" / "secret"
    given.parent.mkdir()
    given.write_text(f"  {text}\n")  # surrounding whitespace (echo's newline) is not part of it
    monkeypatch.setenv("LMOPS_SECRET_FILE", str(given))
    assert verifies(settings, key)
    assert not (tmp_path / "lmops.secret").exists()
    assert secret_bytes(text) == text.encode() and secret_bytes("hex:" + "ab" * 16) == b"\xab" * 16


def test_a_secret_file_named_on_sqlite_is_made_there(tmp_path):
    secret_file = tmp_path / "etc" / "lmops-secret"
    settings = sqlite_settings(tmp_path, secret_file=str(secret_file))
    key = issue(settings)
    assert private(secret_file) and not (tmp_path / "lmops.secret").exists()
    assert verifies(settings, key)


@pytest.mark.postgres
def test_postgresql_takes_no_secret_from_the_database(pg_url, tmp_path):
    with pytest.raises(SecretError, match=r"set \$LMOPS_SECRET .* or \$LMOPS_SECRET_FILE \(access.secret_file\)"):
        issue(plain_settings(pg_url))
    assert database_secret(pg_url) is None  # none was generated there
    refused = CliRunner().invoke(cli, ["teams", "list"], env={"LMOPS_DATABASE_URL": pg_url})
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    (line,) = [x for x in refused.output.splitlines() if "LMOPS_SECRET" in x]  # one line, naming both ways
    assert "on PostgreSQL the key-hashing secret must come from outside the database" in line
    assert "$LMOPS_SECRET_FILE" in line
    with pytest.raises(SecretError, match="does not exist: on PostgreSQL lmops does not make one up"):
        issue(plain_settings(pg_url, secret_file=str(tmp_path / "missing")))
    (tmp_path / "secret").write_text(secrets.token_hex(32))
    settings = plain_settings(pg_url, secret_file=str(tmp_path / "secret"))
    key = issue(settings)
    assert verifies(settings, key)
    assert database_secret(pg_url) is None


@pytest.mark.postgres
def test_a_postgresql_install_moves_its_secret_out_with_export_secret(pg_url, tmp_path, monkeypatch):
    old = secrets.token_bytes(32)
    monkeypatch.setenv("LMOPS_SECRET", f"hex:{old.hex()}")
    settings = plain_settings(pg_url)
    key = issue(settings)  # stored as an earlier lmops did, under the secret it kept in the database
    monkeypatch.delenv("LMOPS_SECRET")
    database_secret(pg_url, plant=old)

    monkeypatch.setenv("LMOPS_DATABASE_URL", pg_url)
    secret_file = tmp_path / "secrets" / "lmops"
    result = CliRunner().invoke(cli, ["keys", "export-secret", str(secret_file)])
    assert result.exit_code == 0, result.output
    assert f"set LMOPS_SECRET_FILE={secret_file}" in result.output
    assert private(secret_file) and secret_file.read_text() == f"hex:{old.hex()}\n"
    again = CliRunner().invoke(cli, ["keys", "export-secret", str(secret_file)])
    assert again.exit_code == 1 and "exists already" in again.output  # never overwritten

    monkeypatch.setenv("LMOPS_SECRET_FILE", str(secret_file))
    assert verifies(settings, key)  # the keys of before verify
    assert database_secret(pg_url) is None  # the start that read it from the file deleted the database's copy
    gone = CliRunner().invoke(cli, ["keys", "export-secret", str(tmp_path / "other")])
    assert gone.exit_code == 1 and "holds no key-hashing secret" in gone.output
