"""``lmops bench`` (load endpoints, write the results) and ``lmops bench compare A.json B.json``."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace


from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lmops.bench import report
from lmops.bench.client import Record
from lmops.bench.loads import DEFAULT_LEVELS, parse_levels
from lmops.bench.metrics import band_stats, level_stats
from lmops.bench.options import parse_slo, parse_targets
from lmops.bench.prompts import BUILTIN, DatasetError, interleaved, load_dataset
from lmops.bench.runner import Plan, Runner

bench_app = typer.Typer(help="Load OpenAI-compatible endpoints and measure what their users see.",
                        invoke_without_command=True)
COMMANDS = (("bench", bench_app),)  # the command groups the CLI root mounts


def _console() -> Console:
    """The tables' console: a terminal's width, or 200 columns when written to a file or a pipe (rich's 80 would cut
    the per-level table's columns down to single letters)."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


@bench_app.callback()
def bench(
    ctx: typer.Context,
    target: list[str] = typer.Option([], "--target", "-t", help="name=URL[,model=NAME] (repeatable); URL: a server, "
                                     "its /v1 base or its chat completions endpoint"),
    dataset: Optional[Path] = typer.Option(None, help="JSONL of prompts ({'prompt': ...} or {'messages': [...]}) "
                                           "or OpenAI batch input lines (default: the built-in prompt set)"),
    concurrency: str = typer.Option(",".join(map(str, DEFAULT_LEVELS)), help="Concurrency levels to sweep"),
    request_rate: list[float] = typer.Option([], help="Requests/s instead of a concurrency sweep (repeatable)"),
    burstiness: float = typer.Option(1.0, help="Arrival gaps' gamma shape: 1 Poisson, <1 burstier, >1 steadier"),
    max_concurrency: Optional[int] = typer.Option(None, help="At a request rate: at most this many in flight"),
    requests: Optional[int] = typer.Option(None, help="Requests per target and level (default 4 × concurrency, "
                                           "10 s of a rate; at least 32)"),
    duration: float = typer.Option(60.0, help="Seconds per target and level at most"),
    rounds: int = typer.Option(2, help="Slices per level, targets alternating ABBA"),
    turns: int = typer.Option(1, help="Turns per conversation (>1: multi-turn with a shared system prompt)"),
    max_tokens: Optional[int] = typer.Option(None, help="max_tokens of every request (default: the prompt's, "
                                             "else 256)"),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature of every request"),
    slo: str = typer.Option("ttft=500ms,tpot=50ms", help="Goodput SLOs: ttft, ttst, tpot, itl, e2e"),
    seed: int = typer.Option(0, help="Seed of the arrival times"),
    timeout: float = typer.Option(300.0, help="Seconds a request may take"),
    warmup: int = typer.Option(1, help="Unrecorded requests per target before the first level"),
    api_key: Optional[str] = typer.Option(None, envvar="LMOPS_API_KEY", help="Bearer token for every target"),
    out: Optional[Path] = typer.Option(None, help="Output folder (default bench-results/DATE-TIME)"),
) -> None:
    """Load the targets level by level; write requests.jsonl, summary.json, CSV, PNG charts and report.html."""
    if ctx.invoked_subcommand is not None:
        return
    if not target:
        raise typer.BadParameter("name at least one target, e.g. --target vllm=http://127.0.0.1:8000",
                                 param_hint="--target")
    try:
        targets = parse_targets(target)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--target") from None
    try:
        slos = parse_slo(slo)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--slo") from None
    try:
        levels = parse_levels(concurrency)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--concurrency") from None
    try:
        prompts = load_dataset(dataset) if dataset else interleaved(BUILTIN)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset") from None
    for name, value in (("--requests", requests), ("--rounds", rounds), ("--turns", turns),
                        ("--max-tokens", max_tokens), ("--max-concurrency", max_concurrency)):
        if value is not None and value < 1:
            raise typer.BadParameter("must be at least 1", param_hint=name)
    if warmup < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--warmup")
    if duration <= 0 or burstiness <= 0 or timeout <= 0 or any(r <= 0 for r in request_rate):
        raise typer.BadParameter("--duration, --burstiness, --timeout and --request-rate must be positive")
    if max_tokens:
        prompts = [replace(p, max_tokens=max_tokens) for p in prompts]
    plan = Plan(targets, prompts, levels=levels, rates=tuple(request_rate), requests=requests, duration=duration,
                rounds=rounds, turns=turns, burstiness=burstiness, seed=seed, max_concurrency=max_concurrency,
                timeout=timeout, warmup=warmup, api_key=api_key,
                extra={"temperature": temperature} if temperature is not None else {})
    folder = out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"cannot create {folder}: {exc.strerror}", param_hint="--out") from None
    console, err = _console(), Console(stderr=True)
    settings = {"levels": list(levels) if not request_rate else [], "rates": list(request_rate),
                "requests": requests, "duration": duration, "rounds": rounds, "turns": turns,
                "burstiness": burstiness, "seed": seed, "max_concurrency": max_concurrency,
                "max_tokens": max_tokens, "temperature": temperature, "warmup": warmup,
                "dataset": str(dataset) if dataset else "built-in"}
    try:
        code = run_and_report(plan, folder, slos, settings, console, err)
    except RuntimeError as exc:
        err.print(f"[red]lmops bench: {escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def run_and_report(plan: Plan, folder: Path, slo: dict[str, float], settings: dict[str, Any], console: Console,
                   err: Console) -> int:
    """Run ``plan``, writing requests.jsonl as requests finish, then the summary files; 130 when interrupted."""
    records: list[Record] = []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    total = sum(plan.count(v) for _, v in plan.level_labels()) * len(plan.targets)
    with (folder / "requests.jsonl").open("wb") as lines, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err, transient=True) as progress:
        task = progress.add_task("bench", total=total)
        flushed = time.monotonic()

        def sink(rec: Record) -> None:
            nonlocal flushed
            records.append(rec)
            lines.write(rec.dumps() + b"\n")
            progress.update(task, advance=1, description=f"{rec.target} {rec.level}")
            if time.monotonic() - flushed > 1.0:  # a killed run still leaves what it measured on disk
                lines.flush()
                flushed = time.monotonic()

        runner = Runner(plan, sink, on_round=lines.flush)
        slices = _run(runner)
    interrupted = runner.stop.is_set()
    meta = {"started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "interrupted": interrupted, "mode": plan.mode, "slo": slo, "settings": settings,
            "targets": [{"name": t.name, "url": t.url, "model": runner.models.get(t.name, t.model)}
                        for t in plan.targets]}
    s = report.summary(meta, level_stats(records, slices, slo), band_stats(records))
    report.print_summary(s, console)
    write_files(s, folder, err)
    if interrupted:
        err.print(f"[yellow]interrupted: kept the {len(records)} requests that finished[/]")
    return 130 if interrupted else 0


def _run(runner: Runner) -> list[Any]:
    """Run on uvloop when installed (the client must not be the bottleneck); Ctrl-C stops the run, keeping it."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, runner.stop.set)
        loop.add_signal_handler(signal.SIGTERM, runner.stop.set)
        try:
            return await runner.run()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)

    with asyncio.Runner(loop_factory=factory) as r:
        return r.run(main())


def write_files(s: dict[str, Any], folder: Path, err: Console | None = None) -> None:
    """summary.json, levels.csv, bands.csv, the PNG charts (when matplotlib is installed) and report.html."""
    report.write_json(s, folder / "summary.json")
    report.write_csv(s, folder)
    try:
        charts = report.write_charts(s, folder)
    except ImportError as exc:
        charts = []
        if err:
            err.print(f"[yellow]{escape(str(exc))}[/]")
    report.write_html(s, folder, charts)
    if err:
        err.print(f"wrote {folder}/: requests.jsonl, summary.json, levels.csv, bands.csv, "
                  f"{''.join(c.name + ', ' for c in charts)}report.html")


@bench_app.command("compare")
def compare(a: Path = typer.Argument(..., help="summary.json of run A"),
            b: Path = typer.Argument(..., help="summary.json of run B")) -> None:
    """Ratios B ÷ A of throughput, goodput and latencies, per target and level both runs have."""
    try:
        sa, sb = report.load_summary(a), report.load_summary(b)
    except report.ReportError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not report.print_compare(sa, sb, _console()):
        Console(stderr=True).print("[yellow]the two runs share no target and level[/]")
        raise typer.Exit(1)


