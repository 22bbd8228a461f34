"""What every ``lmops`` command shares: the ``--config`` option and settings loaded with readable errors."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from lmops.config import ConfigError, Settings, load_settings

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML file (default: $LMOPS_CONFIG or ./lmops.yaml)")


def load_settings_or_exit(config: Optional[str], **overrides: object) -> Settings:
    """The settings; on a configuration problem, every problem with its place, then exit status 2."""
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        print_config_error(exc)
        raise typer.Exit(2) from None


def print_config_error(exc: ConfigError, what: str = "Invalid configuration") -> None:
    """Every problem of ``exc``, with its place, on stderr."""
    err = Console(stderr=True)
    err.print(f"[bold red]{what}[/] in {escape(exc.source)}:")
    for problem in exc.problems:
        err.print(f"  - {escape(str(problem))}", soft_wrap=True)
