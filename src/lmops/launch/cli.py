"""``lmops engine launch SPEC``: start vLLM, lmdeploy, TGI or llama.cpp from one spec (docs/engines.md)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from lmops.cli_support import ConfigOpt, load_settings_or_exit, print_config_error
from lmops.config import ConfigError, resolve_config_path
from lmops.launch.command import EngineCommand, Unsupported
from lmops.launch.process import EngineFailed, EngineProcess
from lmops.launch.register import replica_entry, replica_yaml
from lmops.launch.spec import EngineSpec, load_spec
from lmops.launch.translate import translate

engine_app = typer.Typer(help="Launch inference engines from one spec.", no_args_is_help=True)
COMMANDS = (("engine", engine_app),)  # the command groups the CLI root mounts


def _fail(err: Console, message: str, code: int) -> typer.Exit:
    err.print(f"[red]{escape(message)}[/]", soft_wrap=True)
    return typer.Exit(code)


def _registration(err: Console, spec: EngineSpec, cmd: EngineCommand, model: str, config: Optional[str]) -> str:
    settings = load_settings_or_exit(config) if resolve_config_path(config) is not None else None
    try:
        return replica_yaml(replica_entry(spec, cmd, model, settings))
    except Unsupported as exc:
        raise _fail(err, f"cannot register: {exc}", 2) from None


@engine_app.command("launch")
def launch(
    spec_file: str = typer.Argument(..., metavar="SPEC", help="engine spec, YAML or JSON"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the command and the warnings; start nothing"),
    ready_timeout: float = typer.Option(600.0, min=0, help="seconds the engine may take to load its model"),
    grace: float = typer.Option(10.0, min=0, help="seconds between SIGTERM and SIGKILL when stopping"),
    register_as: Optional[str] = typer.Option(None, "--register-as", metavar="MODEL",
                                               help="print the lmops.yaml entry that makes the engine a replica "
                                                    "of this gateway model"),
    config: Optional[str] = ConfigOpt,
) -> None:
    """Start an engine from SPEC: translate it into the engine's flags, stream its logs, wait until it is ready,
    stop it cleanly on Ctrl-C or SIGTERM."""
    err = Console(stderr=True)
    try:
        spec = load_spec(spec_file)
        cmd = translate(spec)
    except ConfigError as exc:
        print_config_error(exc, "Invalid engine spec")
        raise typer.Exit(2) from None
    except Unsupported as exc:
        raise _fail(err, f"{spec_file}: {exc}", 2) from None
    for warning in cmd.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    snippet = _registration(err, spec, cmd, register_as, config) if register_as else None
    if dry_run:
        print(cmd.shell())
        if snippet:
            print(f"# add to lmops.yaml:\n{snippet}", end="")
        return

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _run(err, spec, cmd, snippet, stop, ready_timeout=ready_timeout, grace=grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(err: Console, spec: EngineSpec, cmd: EngineCommand, snippet: Optional[str], stop: threading.Event, *,
         ready_timeout: float, grace: float) -> None:
    """Start the engine, wait until it is ready, then until ``stop`` is set or the engine exits; stop it."""
    engine = EngineProcess(cmd, spec.base_url, out=sys.stdout, prefix=spec.engine)
    err.print(f"starting {escape(cmd.shell())}", soft_wrap=True, highlight=False)
    try:
        engine.start()
        err.print(f"engine pid {engine.pid} (its own process group)", highlight=False)
        if engine.wait_ready(ready_timeout, stop):
            err.print(f"[green]ready[/]: {spec.base_url}/v1", highlight=False)
            if snippet:
                err.print("add to lmops.yaml:")
                print(snippet, end="", flush=True)
        while not stop.wait(0.2):
            code = engine.returncode()
            if code is not None:
                raise EngineFailed(f"the engine exited with status {code}", engine.tail())
    except EngineFailed as exc:
        engine.stop(grace)
        raise _fail(err, exc.report(), 1) from None
    err.print("stopping the engine")
    code = engine.stop(grace)
    how = f"by {signal.Signals(-code).name}" if code is not None and code < 0 else f"with status {code}"
    err.print(f"engine stopped ({how})", highlight=False)
