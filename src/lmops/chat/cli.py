"""``lmops users set-password USER``: a user's web password for the chat sign-in (mounted by the CLI root into
access control's ``users`` group)."""

from __future__ import annotations

import asyncio
import sys
from typing import Optional

import typer
from rich.console import Console

from lmops.cli_support import ConfigOpt, load_settings_or_exit


def set_password(
    user: str = typer.Argument(..., help="the user's name or id"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin (one line)"),
    config: Optional[str] = ConfigOpt,
) -> None:
    """Set a user's password for signing in to the web chat (ends the user's sessions)."""
    from lmops.chat.accounts import Accounts
    from lmops.chat.passwords import Passwords, password_problem
    from lmops.store.database import create_engine, upgrade_async

    settings = load_settings_or_exit(config)
    err = Console(stderr=True)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    problem = password_problem(password)
    if problem:
        err.print(f"[red]{problem}[/]")
        raise typer.Exit(1)

    async def go() -> str | None:
        await upgrade_async(settings.database_url)
        db = create_engine(settings.database_url)
        try:
            accounts = Accounts(db)
            account = await accounts.user(user)
            if account is None:
                return None
            await accounts.set_password_hash(account.user_id, Passwords().hash(password))
            return account.name
        finally:
            await db.dispose()

    name = asyncio.run(go())
    if name is None:
        err.print(f"[red]No user '{user}'.[/]")
        raise typer.Exit(1)
    Console().print(f"Password set for {name}.")


# Commands the CLI root adds to access control's ``users`` group.
USER_COMMANDS = (("set-password", set_password),)
