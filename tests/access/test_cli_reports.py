"""``lmops teams|users|keys|limits|usage`` against a database, and the report exports."""

from __future__ import annotations

import asyncio
import csv
import random
import re
from datetime import datetime, timedelta, timezone

import openai
import pytest
from openpyxl import load_workbook
from sqlalchemy import insert
from typer.testing import CliRunner

from lmops.access.tables import Team
from lmops.cli import app as cli
from lmops.store.database import create_engine, upgrade
from lmops.usage.records import RequestRecord
from lmops.usage.reports import usage_report

from .helpers import CHAT, ledger_rows


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_manages_principals_that_the_gateway_enforces(start_gateway, database_url, monkeypatch):
    gateway = start_gateway(database_url=database_url)
    monkeypatch.setenv("LMOPS_DATABASE_URL", database_url)
    _cli("teams", "create", "acme")
    _cli("users", "create", "bob", "--team", "acme", "--role", "team_admin")
    out = _cli("keys", "create", "--team", "acme", "--user", "bob", "--scopes", "inference")
    (key,) = [line for line in out.splitlines() if line.startswith("lmops-")]
    prefix = key.split("-")[1]
    _cli("limits", "set", "key", prefix, "--models", "fake", "--rpm", "50")
    _cli("limits", "set", "team", "acme", "--budget-usd", "10", "--period", "day")
    shown = _cli("limits", "show", "key", prefix)
    assert "fake" in shown and "50" in shown
    assert "acme" in _cli("teams", "list")
    assert "bob" in _cli("users", "list", "--team", "acme")
    listed = _cli("keys", "list", "--team", "acme")
    assert prefix in listed and key not in listed

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    assert client.chat.completions.create(model="fake", messages=CHAT, max_tokens=16).usage.completion_tokens == 10
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="other", messages=CHAT, max_tokens=5)
    ledger_rows(database_url, wait_for=2)
    report = _cli("usage", "report", "--by", "team", "--team", "acme")
    assert "total" in report and " 2 " in report
    by_user = _cli("usage", "report", "--by", "team,user", "--team", "acme")
    assert re.search(r"acme\s.*bob\s.*\s2\s", by_user)  # names, not ids

    _cli("keys", "revoke", prefix)
    gateway.services.access.cache.invalidate()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="fake", messages=CHAT, max_tokens=5)
    assert CliRunner().invoke(cli, ["teams", "create", "acme"]).exit_code == 1  # names are unique


def _seed_ledger(url: str, rows: int) -> list[dict]:
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    rng = random.Random(7)
    data = [{"id": f"{i:032x}", "request_id": f"r{i}", "created_at": start + timedelta(hours=rng.randrange(24 * 10)),
             "day": None, "team_id": rng.choice(["t1", "t2", "t3"]), "user_id": rng.choice(["u1", "u2", None]),
             "key_id": "k1", "model": rng.choice(["fake", "big"]), "adapter": None, "endpoint": "chat.completions",
             "stream": False, "prompt_tokens": rng.randrange(100), "completion_tokens": rng.randrange(100),
             "cost_usd": rng.random() / 100, "latency_ms": 1.0, "status": 200} for i in range(rows)]
    unbilled = {"id": "f" * 32, "request_id": "anonymous", "created_at": start + timedelta(days=4), "day": None,
                "team_id": None, "user_id": None, "key_id": None, "model": "fake", "adapter": None,
                "endpoint": "chat.completions", "stream": False, "prompt_tokens": 5, "completion_tokens": 5,
                "cost_usd": None, "latency_ms": 1.0, "status": 401}  # a record that is not in the ledger
    for row in data:
        row["day"] = row["created_at"].date()

    async def write() -> None:
        db = create_engine(url)
        async with db.begin() as conn:
            await conn.execute(insert(RequestRecord), [*data, unbilled])
        await db.dispose()

    upgrade(url)
    asyncio.run(write())
    return data


@pytest.mark.parametrize("by", ["team", "user", "model", "day", "team,model,day", "day,user"])
def test_report_groups_match_the_rows(database_url, by):
    data = _seed_ledger(database_url, 500)
    since = datetime(2025, 3, 3, tzinfo=timezone.utc)
    until = datetime(2025, 3, 8, tzinfo=timezone.utc)
    report = asyncio.run(_report(database_url, by, since, until))
    chosen = [r for r in data if since <= r["created_at"] < until]
    key = {"team": lambda r: r["team_id"], "user": lambda r: r["user_id"], "model": lambda r: r["model"],
           "day": lambda r: r["created_at"].date().isoformat()}
    dims = by.split(",")
    expected: dict[tuple, list[int]] = {}
    for r in chosen:
        expected.setdefault(tuple(key[d](r) for d in dims), []).append(r["prompt_tokens"] + r["completion_tokens"])
    assert {row.keys: row.tokens for row in report.rows} == {g: sum(v) for g, v in expected.items()}
    assert {row.keys: row.requests for row in report.rows} == {g: len(v) for g, v in expected.items()}
    assert report.totals.requests == len(chosen)
    assert report.totals.cost_usd == pytest.approx(sum(r["cost_usd"] for r in chosen))


async def _report(url, by, since, until):
    db = create_engine(url)
    try:
        return await usage_report(db, by, since=since, until=until)
    finally:
        await db.dispose()


def test_report_exports_csv_xlsx_png(tmp_path, monkeypatch):
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    data = _seed_ledger(url, 300)
    monkeypatch.setenv("LMOPS_DATABASE_URL", url)
    files = {ext: tmp_path / f"usage.{ext}" for ext in ("csv", "xlsx", "png")}
    _cli("usage", "report", "--by", "model", "--since", "2025-03-01", "--until", "2025-04-01",
         "--csv", str(files["csv"]), "--xlsx", str(files["xlsx"]), "--png", str(files["png"]))
    table = list(csv.reader(files["csv"].open()))
    assert table[0] == ["model", "requests", "prompt_tokens", "completion_tokens", "cost_usd"]
    assert [r[0] for r in table[1:]] == ["big", "fake", "total"]
    assert int(table[-1][1]) == len(data)
    sheet = load_workbook(files["xlsx"]).active
    assert [c.value for c in sheet[1]] == table[0]
    assert sheet.cell(sheet.max_row, 2).value == len(data)
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files["png"].stat().st_size > 5000


def test_report_by_several_dimensions_names_teams_and_exports_each_as_a_column(tmp_path, monkeypatch):
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    data = _seed_ledger(url, 300)
    asyncio.run(_name_teams(url, {"t1": "alpha", "t2": '=HYPERLINK("http://x","beta")'}))  # t3: no row in teams
    monkeypatch.setenv("LMOPS_DATABASE_URL", url)
    files = {ext: tmp_path / f"usage.{ext}" for ext in ("csv", "xlsx", "png")}
    shown = _cli("usage", "report", "--by", "team,model", "--csv", str(files["csv"]), "--xlsx", str(files["xlsx"]),
                 "--png", str(files["png"]))
    assert "alpha" in shown and "HYPERLINK" in shown and "t3" in shown and "t1" not in shown
    table = list(csv.reader(files["csv"].open()))
    assert table[0] == ["team", "team_name", "model", "requests", "prompt_tokens", "completion_tokens", "cost_usd"]
    expected: dict[tuple[str, str], int] = {}
    for r in data:
        expected[(r["team_id"], r["model"])] = expected.get((r["team_id"], r["model"]), 0) + 1
    names = {"t1": "alpha", "t2": '=HYPERLINK("http://x","beta")', "t3": ""}
    assert {(t, n, m): int(k) for t, n, m, k, *_ in table[1:-1]} == {
        (t, names[t], m): k for (t, m), k in expected.items()}
    assert table[-1][:3] == ["total", "", ""] and int(table[-1][3]) == len(data)
    sheet = load_workbook(files["xlsx"]).active
    assert [c.value for c in sheet[1]] == table[0] and sheet.max_row == len(table)
    named = [c for c in sheet["B"] if c.value == names["t2"]]
    assert named and all(c.data_type == "s" for c in named)  # text, not a live formula
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(cli, ["usage", "report", "--by", "team,price"])
    assert bad.exit_code == 2 and "price" in bad.output


async def _name_teams(url: str, names: dict[str, str]) -> None:
    db = create_engine(url)
    async with db.begin() as conn:
        await conn.execute(insert(Team), [{"id": i, "name": n, "created_at": datetime.now(timezone.utc)}
                                          for i, n in names.items()])
    await db.dispose()
