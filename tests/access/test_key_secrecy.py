"""No key appears in plaintext anywhere but in the response that created it."""

from __future__ import annotations

import asyncio
import io
import logging

import openai
import pytest
from sqlalchemy import select

from lmops.observability.logging import JSONFormatter
from lmops.store.database import create_engine
from lmops.store.schema import metadata

from .helpers import CHAT, ledger_rows


def _dump_database(url: str) -> str:
    async def dump() -> str:
        db = create_engine(url)
        try:
            async with db.connect() as conn:
                parts = []
                for table in metadata.sorted_tables:
                    parts += [repr(tuple(row)) for row in (await conn.execute(select(table))).all()]
                return "\n".join(parts)
        finally:
            await db.dispose()

    return asyncio.run(dump())


@pytest.fixture
def json_logs():
    """Everything logged while the test runs, formatted as the JSON logs of ``lmops serve``."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("lmops"), logging.getLogger("uvicorn")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield out
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_keys_never_stored_logged_or_echoed(gateway, json_logs):
    team = gateway.team(rpm=1000)
    created = gateway.admin("POST", "/keys", json={"team": team["id"], "scopes": ["inference", "admin"]})
    assert created.status_code == 201
    key, row = created.json()["key"], created.json()
    other, other_row = gateway.key(team["id"])
    keys = [gateway.admin_key, key, other]

    client = gateway.client(key)
    client.chat.completions.create(model="fake", messages=CHAT, max_tokens=5)
    list(client.chat.completions.create(model="fake", messages=CHAT, max_tokens=5, stream=True))
    responses = []
    for bad in (key[:-1] + ("A" if key[-1] != "A" else "B"), other + "x"):
        with pytest.raises(openai.AuthenticationError) as err:
            gateway.client(bad).chat.completions.create(model="fake", messages=CHAT)
        responses.append(err.value.response.text)
    gateway.ok("POST", f"/keys/{other_row['id']}/revoke")
    with pytest.raises(openai.AuthenticationError) as err:
        gateway.client(other).chat.completions.create(model="fake", messages=CHAT)
    responses.append(err.value.response.text)
    for path in ("/keys", f"/keys?team={team['id']}", "/teams", "/users", "/usage?by=key",
                 f"/limits/key/{row['id']}"):
        responses.append(gateway.admin("GET", path).text)
    ledger_rows(gateway.services.settings.database_url, wait_for=2)

    database = _dump_database(gateway.services.settings.database_url)
    logs = json_logs.getvalue()
    assert row["prefix"] in database  # the visible prefix is stored; the key is not
    for text in keys:
        secret = text.split("-", 2)[2]
        for where, content in (("database", database), ("logs", logs), ("responses", "\n".join(responses))):
            assert text not in content, f"a key is in the {where}"
            assert secret not in content, f"a key's secret part is in the {where}"
    assert '"hash"' not in "\n".join(responses)
