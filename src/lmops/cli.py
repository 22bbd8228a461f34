"""The ``lmops`` command line: serve, models, chat, config check, db upgrade."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lmops.access import cli as access_cli
from lmops.batch import cli as batch_cli
from lmops.bench import cli as bench_cli
from lmops.chat import cli as chat_cli
from lmops.cli_support import ConfigOpt
from lmops.cli_support import load_settings_or_exit as _settings
from lmops.launch import cli as launch_cli

app = typer.Typer(help="lmops: run large language models in production.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
for name, commands in (*access_cli.COMMANDS, *batch_cli.COMMANDS, *bench_cli.COMMANDS,
                       *launch_cli.COMMANDS):  # each capability's groups of commands
    app.add_typer(commands, name=name)
for name, command in chat_cli.USER_COMMANDS:  # chat's web passwords belong with the users
    access_cli.users_app.command(name)(command)


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Interface to listen on (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)"),
    workers: Optional[int] = typer.Option(None, help="Worker processes"),
    config: Optional[str] = ConfigOpt,
) -> None:
    """Start the gateway (and the embedded model when configured)."""
    import uvicorn

    from lmops.app import create_app
    from lmops.http_server import server_options
    from lmops.observability.logging import configure_logging
    from lmops.preflight import startup_problems

    settings = _settings(config)
    server = settings.server.model_copy(update={k: v for k, v in
                                                 {"host": host, "port": port, "workers": workers}.items()
                                                 if v is not None})
    settings = settings.model_copy(update={"server": server})
    configure_logging(server.log_level, server.log_json)
    problems = startup_problems(settings)  # a bad admin key or secret, an engine build that crashes here
    if problems:
        print("\n\n".join(f"lmops: cannot start: {p}" for p in problems), file=sys.stderr)
        raise typer.Exit(1)
    url = f"http://{server.host}:{server.port}"
    console = _console(stderr=True)
    console.print(f"[bold green]lmops[/] serving {', '.join(m.name for m in settings.models)} on [bold]{url}[/]")
    first = settings.models[0].name if settings.models else "MODEL"
    auth = ' -H "authorization: Bearer $LMOPS_API_KEY"' if settings.access.enabled else ""
    key = "os.environ['LMOPS_API_KEY']" if settings.access.enabled else "'-'"
    console.print(f"  curl {url}/v1/chat/completions{auth} -H 'content-type: application/json' "
                  f"-d '{{\"model\": \"{first}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
                  soft_wrap=True)
    console.print(f"  python -c \"import os; from openai import OpenAI; "
                  f"c = OpenAI(base_url='{url}/v1', api_key={key}); "
                  f"print(c.chat.completions.create(model='{first}', "
                  f"messages=[{{'role': 'user', 'content': 'Hello'}}]).choices[0].message.content)\"", soft_wrap=True)
    if settings.access.enabled:
        console.print("  (LMOPS_API_KEY: an API key; the first start on an empty database prints an admin key below)",
                      soft_wrap=True)
    from lmops.store.database import upgrade

    upgrade(settings.database_url)  # once, here, before any worker starts
    common = server_options(host=server.host, port=server.port, log_level=server.log_level,
                            timeout_graceful_shutdown=10)
    if server.workers > 1:
        if settings.config:
            os.environ["LMOPS_CONFIG"] = settings.config
        uvicorn.run("lmops.app:app_from_env", factory=True, workers=server.workers, **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(settings, migrate=False), **common)  # type: ignore[arg-type]


@app.command()
def models(config: Optional[str] = ConfigOpt) -> None:
    """List the configured models (and their LoRA adapters, as model:adapter) and their engines."""
    settings = _settings(config)
    table = Table("model", "engine", "upstream", "replicas", "context")
    for m in settings.models:
        where = ", ".join(m.replicas) or (m.model_path or "built-in")
        table.add_row(m.name, m.engine.value, m.upstream_name, where, str(m.context_length))
        for a in m.adapters:
            table.add_row(f"{m.name}:{a.name}", m.engine.value, a.upstream_name, where, str(m.context_length))
    _console().print(table)


@app.command()
def chat(
    prompt: str = typer.Argument(..., help="What to ask"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (default: the first configured)"),
    url: Optional[str] = typer.Option(None, help="A running lmops (default: $LMOPS_URL, else run in-process)"),
    api_key: Optional[str] = typer.Option(None, envvar="LMOPS_API_KEY", help="API key for a running lmops"),
    max_tokens: int = typer.Option(256, help="Most tokens to generate"),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature"),
    system: Optional[str] = typer.Option(None, help="System prompt"),
    config: Optional[str] = ConfigOpt,
) -> None:
    """Ask a model and stream its answer to the terminal."""
    from lmops.chat_cli import stream_answer

    settings = _settings(config)
    url = url or os.environ.get("LMOPS_URL")
    name = model or next((m.name for m in settings.models if m.engine.value != "sentence-transformers"), None)
    if not name:
        _console(stderr=True).print("[red]No chat model is configured.[/]")
        raise typer.Exit(2)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body = {"model": name, "messages": messages, "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    try:
        asyncio.run(stream_answer(settings, body, url, api_key, sys.stdout))
    except RuntimeError as exc:
        _console(stderr=True).print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@config_app.command("check")
def config_check(config: Optional[str] = ConfigOpt) -> None:
    """Validate the configuration; report every problem with its location."""
    settings = _settings(config)
    _console().print(f"[green]OK[/]: {settings.config or 'built-in defaults'} declares "
                     f"{len(settings.models)} model(s): {', '.join(m.name for m in settings.models)}")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head"), config: Optional[str] = ConfigOpt) -> None:
    """Apply database migrations."""
    from lmops.store.database import current_revision, upgrade

    settings = _settings(config)
    upgrade(settings.database_url, revision)
    _console().print(f"[green]database at revision[/] {current_revision(settings.database_url)}")


@app.command()
def worker(
    config: Optional[str] = ConfigOpt,
    name: Optional[str] = typer.Option(None, help="Worker name in logs (default: random)"),
    migrate: bool = typer.Option(False, help="Apply database migrations first (one process at a time)"),
) -> None:
    """Run a batch worker: claims queued items, runs their workflows through the engines, until SIGTERM."""
    from lmops.observability.logging import configure_logging
    from lmops.services import running, without_in_process_worker

    settings = without_in_process_worker(_settings(config))
    configure_logging(settings.server.log_level, settings.server.log_json)
    if settings.access.enabled:  # batch calls are admitted by access control, which needs the key-hashing secret
        from lmops.access.secret import secret_problem

        problem = secret_problem(settings)
        if problem:
            print(f"lmops: cannot start: {problem}", file=sys.stderr)
            raise typer.Exit(1)

    async def work() -> int:
        async with running(settings, migrate=migrate) as svc:
            return await batch_cli.run_worker(svc.batch, name=name)

    processed = asyncio.run(work())
    _console(stderr=True).print(f"worker stopped after {processed} items")


@app.command()
def replay(
    item: int = typer.Argument(..., help="Item id (``item_id`` in enrichment results)"),
    step: str = typer.Argument(..., help="Step name"),
    current: bool = typer.Option(False, "--current", help="Also run the step as its workflow defines it today"),
    config: Optional[str] = ConfigOpt,
) -> None:
    """Re-run one step of one item with the request its lineage recorded; show the recorded and replayed outputs
    (and, with --current, the current definition's) side by side and say whether the workflow changed since."""
    from lmops.services import running, without_in_process_worker

    settings = without_in_process_worker(_settings(config))

    async def work() -> bool:
        async with running(settings) as svc:
            return await batch_cli.run_replay(svc.batch, item, step, _console(), current=current)

    try:
        asyncio.run(work())
    except LookupError as exc:
        from rich.markup import escape

        _console(stderr=True).print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None


def main() -> None:
    app()
