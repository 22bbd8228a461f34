"""``lmops teams|users|keys|limits|usage ...``: administration straight against the database."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lmops.access.admin import AdminService, limits_dict
from lmops.access.rules import MAX_RATE, MAX_TOKENS_BUDGET, Limits
from lmops.access.secret import SecretError
from lmops.cli_support import ConfigOpt, load_settings_or_exit
from lmops.protocol.errors import APIError

T = TypeVar("T")

teams_app = typer.Typer(help="Teams (tenants).", no_args_is_help=True)
users_app = typer.Typer(help="Users and their roles.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
limits_app = typer.Typer(help="Model access, rate limits and budgets of a team or a key.", no_args_is_help=True)
usage_app = typer.Typer(help="Usage reports from the ledger.", no_args_is_help=True)

# The command groups the CLI root mounts (``lmops teams ...``).
COMMANDS = (("teams", teams_app), ("users", users_app), ("keys", keys_app), ("limits", limits_app),
            ("usage", usage_app))


@asynccontextmanager
async def _admin_session(config: Optional[str]) -> AsyncIterator[tuple[AdminService, Any]]:
    from lmops.access.counters import MemoryCounters
    from lmops.access.service import AccessService
    from lmops.store.database import create_engine, upgrade_async

    settings = load_settings_or_exit(config)
    await upgrade_async(settings.database_url)
    db = create_engine(settings.database_url)
    try:
        access = AccessService(settings, db, counters=MemoryCounters())
        await access.start(bootstrap=False)
        assert access.admin is not None
        yield access.admin, db
        await access.stop()
    finally:
        await db.dispose()


def _run(config: Optional[str], work: Callable[[AdminService, Any], Awaitable[T]]) -> T:
    async def go() -> T:
        async with _admin_session(config) as (admin, db):
            return await work(admin, db)

    try:
        return asyncio.run(go())
    except APIError as exc:
        Console(stderr=True).print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from None
    except SecretError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]{escape(str(exc))}[/]", highlight=False)
        raise typer.Exit(1) from None


def _console() -> Console:
    """Tables in full when piped (ids and prefixes must not be cut to fit 80 columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=240)


def _show(rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row[c]) for c in columns))
    _console().print(table)


# -- teams -----------------------------------------------------------------------------------
@teams_app.command("create")
def teams_create(name: str, config: Optional[str] = ConfigOpt) -> None:
    """Create a team."""
    row = _run(config, lambda a, _: a.create_team(None, name))
    _show([row], ["id", "name", "created_at"])


@teams_app.command("list")
def teams_list(config: Optional[str] = ConfigOpt) -> None:
    """List the teams."""
    _show(_run(config, lambda a, _: a.list_teams(None)), ["id", "name", "created_at"])


# -- users -----------------------------------------------------------------------------------
@users_app.command("create")
def users_create(name: str, team: str = typer.Option(..., help="team id or name"),
                 role: str = typer.Option("member", help="admin | team_admin | member"),
                 config: Optional[str] = ConfigOpt) -> None:
    """Create a user in a team."""
    row = _run(config, lambda a, _: a.create_user(None, name, team, role))
    _show([row], ["id", "name", "team_id", "role"])


@users_app.command("list")
def users_list(team: Optional[str] = typer.Option(None, help="only this team"),
               config: Optional[str] = ConfigOpt) -> None:
    """List the users (of one team with --team)."""
    _show(_run(config, lambda a, _: a.list_users(None, team)), ["id", "name", "team_id", "role", "created_at"])


# -- keys ------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(team: str = typer.Option(..., help="team id or name"),
                user: Optional[str] = typer.Option(None, help="user id or name"),
                name: Optional[str] = typer.Option(None, help="a label"),
                scopes: str = typer.Option("inference,batch", help="comma-separated: inference, batch, admin"),
                expires_days: Optional[float] = typer.Option(None, help="expire after this many days"),
                config: Optional[str] = ConfigOpt) -> None:
    """Create an API key; its text is printed this once and never stored."""
    expires = datetime.now(timezone.utc) + timedelta(days=expires_days) if expires_days else None
    scope_set = frozenset(s.strip() for s in scopes.split(",") if s.strip())
    row, text = _run(config, lambda a, _: a.issue_key(None, team, user_id=user, name=name, scopes=scope_set,
                                                      expires_at=expires))
    _show([row], ["id", "prefix", "team_id", "user_id", "scopes", "expires_at"])
    Console(stderr=True).print("[bold]API key (shown only once):[/]")
    print(text)


@keys_app.command("list")
def keys_list(team: Optional[str] = typer.Option(None, help="only this team"),
              config: Optional[str] = ConfigOpt) -> None:
    """List the API keys: prefixes and metadata, never the keys themselves."""
    _show(_run(config, lambda a, _: a.list_keys(None, team)),
          ["id", "prefix", "name", "team_id", "user_id", "scopes", "expires_at", "revoked_at"])


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="key id or prefix"), config: Optional[str] = ConfigOpt) -> None:
    """Revoke a key (every replica refuses it within the key cache TTL)."""
    row = _run(config, lambda a, _: a.revoke_key(None, key))
    _show([row], ["id", "prefix", "revoked_at"])


@keys_app.command("export-secret")
def keys_export_secret(file: Path = typer.Argument(..., help="the secret file to create (mode 0600)"),
                       config: Optional[str] = ConfigOpt) -> None:
    """Write the key-hashing secret an earlier lmops kept in the database to FILE, to read it from there
    ($LMOPS_SECRET_FILE): the keys stored under it keep working, and a copy of the database no longer holds it."""
    from lmops.access.secret import write_secret_file
    from lmops.access.store import AccessStore
    from lmops.store.database import create_engine

    settings = load_settings_or_exit(config)

    async def read() -> bytes | None:
        db = create_engine(settings.database_url)
        try:
            return await AccessStore(db).legacy_secret()
        finally:
            await db.dispose()

    err = Console(stderr=True, highlight=False, soft_wrap=True)  # a path cut in two cannot be copied
    legacy = asyncio.run(read())
    if legacy is None:
        err.print("[red]The database holds no key-hashing secret (table server_secrets): nothing to export.[/]")
        raise typer.Exit(1)
    if not write_secret_file(file, f"hex:{legacy.hex()}"):
        err.print(f"[red]{file} exists already: name a new file.[/]")
        raise typer.Exit(1)
    err.print(f"Wrote the key-hashing secret to {file} (mode 0600). Give it to every replica and set "
              f"LMOPS_SECRET_FILE={file} (or LMOPS_SECRET to its content); the first start that reads it there "
              "deletes the database's copy.")


# -- limits ----------------------------------------------------------------------------------
@limits_app.command("set")
def limits_set(
    subject_type: str = typer.Argument(..., help="team | key"),
    subject: str = typer.Argument(..., help="team id/name or key id/prefix"),
    models: Optional[str] = typer.Option(None, help="allowed models, comma-separated patterns; 'all' = every model"),
    rpm: Optional[int] = typer.Option(None, min=0, max=MAX_RATE, help="requests per minute"),
    tpm: Optional[int] = typer.Option(None, min=0, max=MAX_RATE, help="tokens per minute"),
    parallel: Optional[int] = typer.Option(None, min=0, max=MAX_RATE, help="requests at a time"),
    budget_usd: Optional[float] = typer.Option(None, min=0, help="dollars per period"),
    budget_tokens: Optional[int] = typer.Option(None, min=0, max=MAX_TOKENS_BUDGET, help="tokens per period"),
    period: Optional[str] = typer.Option(None, help="day | month | total"),
    clear: bool = typer.Option(False, help="start from no limits instead of the current ones"),
    config: Optional[str] = ConfigOpt,
) -> None:
    """Change the given limits of a team or key (the others stay as they are)."""
    changes: dict[str, Any] = {k: v for k, v in {"rpm": rpm, "tpm": tpm, "max_parallel": parallel,
                                                 "budget_usd": budget_usd, "budget_tokens": budget_tokens,
                                                 "budget_period": period}.items() if v is not None}
    if models is not None:
        changes["models"] = None if models == "all" else tuple(m.strip() for m in models.split(",") if m.strip())
    if period is not None and period not in ("day", "month", "total"):
        raise typer.BadParameter("period must be day, month or total")

    async def work(admin: AdminService, _: Any) -> dict[str, Any]:
        current = Limits() if clear else _limits(await admin.get_limits(None, subject_type, subject))
        return await admin.set_limits(None, subject_type, subject, dataclasses.replace(current, **changes))

    _show_limits(_run(config, work))


@limits_app.command("show")
def limits_show(subject_type: str = typer.Argument(..., help="team | key"),
                subject: str = typer.Argument(..., help="team id/name or key id/prefix"),
                config: Optional[str] = ConfigOpt) -> None:
    """Show the limits of a team or a key."""
    _show_limits(_run(config, lambda a, _: a.get_limits(None, subject_type, subject)))


def _limits(row: dict[str, Any]) -> Limits:
    fields = {k: row[k] for k in limits_dict(Limits()) if k in row}
    if fields.get("models") is not None:
        fields["models"] = tuple(fields["models"])
    return Limits(**fields)


def _show_limits(row: dict[str, Any]) -> None:
    _show([{**row, "models": ",".join(row["models"]) if row.get("models") else "all"}],
          ["subject_type", "subject_id", "models", "rpm", "tpm", "max_parallel", "budget_usd", "budget_tokens",
           "budget_period"])


# -- usage -----------------------------------------------------------------------------------
@usage_app.command("report")
def usage_report_cmd(
    by: str = typer.Option("team", help="team | user | key | model | day, or several comma-separated: team,model"),
    since: Optional[datetime] = typer.Option(None, help="from this UTC time (inclusive)"),
    until: Optional[datetime] = typer.Option(None, help="to this UTC time (exclusive)"),
    team: Optional[str] = typer.Option(None, help="only this team (id or name)"),
    csv: Optional[str] = typer.Option(None, "--csv", help="write the report as CSV"),
    xlsx: Optional[str] = typer.Option(None, "--xlsx", help="write the report as an Excel workbook"),
    png: Optional[str] = typer.Option(None, "--png", help="write a chart of usage per day"),
    config: Optional[str] = ConfigOpt,
) -> None:
    """Requests, tokens and cost grouped by team, user, key, model and/or day, with totals."""
    from lmops.usage import reports

    try:
        dims = reports.parse_dimensions(by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by") from None

    async def work(admin: AdminService, db: Any) -> tuple[reports.UsageReport, reports.UsageReport | None]:
        team_id = await admin.visible_team_id(None, team)
        report = await reports.usage_report(db, dims, since=since, until=until, team_id=team_id)
        series = await reports.usage_over_time(db, dims, since=since, until=until, team_id=team_id) if png else None
        return report, series

    report, series = _run(config, work)
    table = Table(*dims, "requests", "prompt tokens", "completion tokens", "cost (USD)")
    for r in report.rows:
        table.add_row(*(r.label(i) for i in range(len(dims))), *_sums(r))
    table.add_row("total", *([""] * (len(dims) - 1)), *_sums(report.totals), style="bold")
    _console().print(table)
    if csv:
        reports.write_csv(report, csv)
    if xlsx:
        reports.write_xlsx(report, xlsx)
    if png and series is not None:
        reports.write_png(series, png)


def _sums(row: Any) -> tuple[str, ...]:
    return str(row.requests), str(row.prompt_tokens), str(row.completion_tokens), f"{row.cost_usd:.6f}"
