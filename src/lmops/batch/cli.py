"""``lmops worker``, ``lmops replay`` and ``lmops batch ...`` (enrichment jobs and OpenAI batches over HTTP)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lmops.batch.service import BatchService

if TYPE_CHECKING:
    from lmops.batch.replay import Replay

batch_app = typer.Typer(help="Enrichment jobs and OpenAI batches on a running lmops.", no_args_is_help=True)
openai_app = typer.Typer(help="OpenAI batches: submit a JSONL of requests, follow, download.", no_args_is_help=True)
batch_app.add_typer(openai_app, name="openai")
COMMANDS = (("batch", batch_app),)  # the command groups the CLI root mounts (``lmops worker`` and ``replay``
#                                     are the root's: they build the whole app)

UrlOpt = typer.Option(None, "--url", envvar="LMOPS_URL", help="lmops base URL (default http://127.0.0.1:8000)")
KeyOpt = typer.Option(None, "--api-key", envvar="LMOPS_API_KEY", help="API key")
FINAL = {"completed", "failed", "expired", "cancelled"}


# -- worker and replay (run against the database directly) ---------------------------------------
async def run_worker(batch: BatchService, *, name: str | None = None) -> int:
    """Run a worker on ``batch`` (started) until SIGTERM/SIGINT; returns how many items it settled."""
    batch.start_worker(name=name)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, batch.worker.stop)
    await batch.wait_worker()
    return int(batch.worker.processed)


async def run_replay(batch: BatchService, item: int, step: str, console: Console, *, current: bool = False) -> bool:
    """Replay ``step`` of ``item`` as recorded (and, with ``current``, as defined today); print the comparison.

    True when the replay gave the recorded output. Raises LookupError (a message for a person) when there is
    nothing to replay."""
    from sqlalchemy.exc import DBAPIError

    from lmops.batch.replay import ReplayError, replay

    try:
        r = await replay(batch, item, step, current=current)
    except DBAPIError as exc:
        raise ReplayError(f"could not read the lineage of item {item}: {exc.orig} "
                          "(is the database schema up to date? run `lmops db upgrade`)") from None
    show_replay(r, console)
    return r.same


def show_replay(r: "Replay", console: Console) -> None:
    """Notes, then recorded / replayed (/ current) side by side, then the output diffs."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    how = "as recorded" if r.as_recorded else "with the step as defined today"
    console.print(f"[bold]item {r.item_id} step {escape(r.step)}[/] (workflow {escape(r.workflow)}): replayed {how}",
                  highlight=False)
    for note in r.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    runs = [("recorded", r.recorded, None),
            ("replayed as recorded" if r.as_recorded else "replayed (current definition)", r.replayed, r.error)]
    if r.current is not None and r.current is not r.replayed:
        runs.append(("current definition", r.current, r.current_error))
    table = Table(show_lines=True)
    table.add_column("")
    for title, _, _ in runs:
        table.add_column(title, overflow="fold")
    for label, cell in _REPLAY_ROWS:
        table.add_row(label, *(Text(cell(out, err)) for _, out, err in runs))
    console.print(table)
    if r.error:
        console.print(f"[red]replay failed:[/] {escape(r.error)}", highlight=False)
    console.print("[green]same output as recorded[/]" if r.same else r.diff(), markup=r.same, highlight=False)
    if r.current is not None and r.current is not r.replayed:
        if r.current_error:
            console.print(f"[red]current definition failed:[/] {escape(r.current_error)}", highlight=False)
        console.print("[green]the current definition gives the recorded output[/]" if r.current_same
                      else r.current_diff(), markup=bool(r.current_same), highlight=False)


def _sampling(out: Any) -> str:
    params = {k: v for k, v in (out.params or {}).items() if k not in ("seed", "response_format")}
    return json.dumps(params, sort_keys=True) if params else "-"


def _response_format(out: Any) -> str:
    rf = (out.params or {}).get("response_format")
    if not rf:
        return "-"
    return f"{rf.get('type')} {(rf.get('json_schema') or {}).get('name', '')}".strip()


def _messages(out: Any) -> str:
    body = (out.request or {}).get("body") or {}
    if not body.get("messages"):
        return out.prompt or "-"
    return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in body["messages"])


def _replay_output(out: Any, err: str | None) -> str:
    from lmops.batch.replay import pretty

    return (f"ERROR {err}\n" if err else "") + pretty(out.output)


_REPLAY_ROWS: list[tuple[str, Any]] = [
    ("status", lambda o, e: o.status),
    ("model", lambda o, e: f"{o.model}:{o.adapter}" if o.adapter else str(o.model or "-")),
    ("prompt version", lambda o, e: o.prompt_version or "-"),
    ("seed", lambda o, e: "-" if o.seed is None else str(o.seed)),
    ("sampling", lambda o, e: _sampling(o)),
    ("response_format", lambda o, e: _response_format(o)),
    ("messages", lambda o, e: _messages(o)),
    ("output", _replay_output),
    ("tokens", lambda o, e: f"{o.prompt_tokens}+{o.completion_tokens}"),
    ("latency", lambda o, e: f"{o.latency_ms:.0f} ms"),
    ("step hash", lambda o, e: o.step_hash or "-"),
]


# -- HTTP client helpers -------------------------------------------------------------------------
def _client(url: Optional[str], api_key: Optional[str]) -> httpx.Client:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=(url or "http://127.0.0.1:8000").rstrip("/"), headers=headers, timeout=300)


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except Exception:  # noqa: BLE001
            message = r.text
        Console(stderr=True).print(f"[red]error {r.status_code}:[/] {message}")
        raise typer.Exit(1)
    return r.json()


def _follow(client: httpx.Client, path: str, counts: Any, console: Console) -> dict[str, Any]:
    """Poll ``path`` with a progress bar (done/failed, rate, ETA) until the job is final."""
    columns = (TextColumn("[bold]{task.fields[status]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]}/s"),
               TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("job", total=None, status="validating", failed=0, rate="-", eta="-")
        started = time.monotonic()
        while True:
            job = _check(client.get(path))
            done, failed, total = counts(job)
            elapsed = time.monotonic() - started
            rate = (done + failed) / elapsed if elapsed > 0 else 0
            eta = f"{(total - done - failed) / rate:.0f}s" if rate and total else "-"
            bar.update(task, total=total or None, completed=done + failed, status=job["status"], failed=failed,
                       rate=f"{rate:.1f}", eta=eta)
            if job["status"] in FINAL:
                return job
            time.sleep(0.5)


def _progress_counts(job: dict[str, Any]) -> tuple[int, int, int]:
    p = job["progress"]
    return p["done"], p["failed"], p["total"]


def _batch_counts(job: dict[str, Any]) -> tuple[int, int, int]:
    c = job["request_counts"]
    return c["completed"], c["failed"], c["total"]


# -- enrichment jobs -----------------------------------------------------------------------------
@batch_app.command("submit")
def submit(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL, CSV or a JSON array"),
           workflow: str = typer.Option(..., "--workflow", "-w", help="Workflow name"),
           param: list[str] = typer.Option([], "--param", "-p", help="KEY=VALUE (VALUE may be JSON)"),
           id_field: Optional[str] = typer.Option(None, help="Record field that identifies a record"),
           wait: bool = typer.Option(True, help="Follow progress until the job ends"),
           url: Optional[str] = UrlOpt, api_key: Optional[str] = KeyOpt) -> None:
    """Upload records and start an enrichment job; show a progress bar (done/failed, rate, ETA)."""
    console = Console(stderr=True)
    params = dict(_param(p) for p in param)
    with _client(url, api_key) as client:
        if file.suffix.lower() == ".json":
            body = {"workflow": workflow, "records": json.loads(file.read_text()), "params": params,
                    "id_field": id_field}
            job = _check(client.post("/v1/enrichment/jobs", json=body))
        else:
            fields = {"workflow": workflow, "params": json.dumps(params)}
            if id_field:
                fields["id_field"] = id_field
            with file.open("rb") as f:
                job = _check(client.post("/v1/enrichment/jobs", data=fields, files={"file": (file.name, f)}))
        print(job["id"])
        if wait:
            job = _follow(client, f"/v1/enrichment/jobs/{job['id']}", _progress_counts, console)
            console.print(f"{job['id']}: {job['status']}, {job['progress']['done']} done, "
                          f"{job['progress']['failed']} failed")


def _param(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@batch_app.command("status")
def status(job_id: str, url: Optional[str] = UrlOpt, api_key: Optional[str] = KeyOpt) -> None:
    """Show an enrichment job (JSON)."""
    with _client(url, api_key) as client:
        print(json.dumps(_check(client.get(f"/v1/enrichment/jobs/{job_id}")), indent=2))


@batch_app.command("results")
def results(job_id: str, format: str = typer.Option("jsonl", help="jsonl or csv"),
            output: Optional[Path] = typer.Option(None, "-o", help="File to write (default stdout)"),
            url: Optional[str] = UrlOpt, api_key: Optional[str] = KeyOpt) -> None:
    """Download an enrichment job's results as JSONL or CSV."""
    with _client(url, api_key) as client:
        with client.stream("GET", f"/v1/enrichment/jobs/{job_id}/results", params={"format": format}) as r:
            if r.status_code >= 400:
                r.read()
                _check(r)
            _write(r.iter_bytes(), output)


@batch_app.command("cancel")
def cancel(job_id: str, url: Optional[str] = UrlOpt, api_key: Optional[str] = KeyOpt) -> None:
    """Cancel an enrichment job."""
    with _client(url, api_key) as client:
        print(_check(client.post(f"/v1/enrichment/jobs/{job_id}/cancel"))["status"])


def _write(chunks: Any, output: Optional[Path]) -> None:
    if output is None:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    with output.open("wb") as f:
        for chunk in chunks:
            f.write(chunk)


# -- OpenAI batches ------------------------------------------------------------------------------
@openai_app.command("submit")
def openai_submit(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL of batch requests"),
                  endpoint: str = typer.Option("/v1/chat/completions", help="The requests' endpoint"),
                  wait: bool = typer.Option(True, help="Follow progress until the batch ends"),
                  url: Optional[str] = UrlOpt, api_key: Optional[str] = KeyOpt) -> None:
    """Upload a JSONL of requests and create an OpenAI batch."""
    console = Console(stderr=True)
    with _client(url, api_key) as client:
        with file.open("rb") as f:
            uploaded = _check(client.post("/v1/files", data={"purpose": "batch"}, files={"file": (file.name, f)}))
        batch = _check(client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": endpoint,
                                                         "completion_window": "24h"}))
        print(batch["id"])
        if wait:
            batch = _follow(client, f"/v1/batches/{batch['id']}", _batch_counts, console)
            console.print(f"{batch['id']}: {batch['status']}, output {batch['output_file_id']}, "
                          f"errors {batch['error_file_id']}")


@openai_app.command("status")
def openai_status(batch_id: str, url: Optional[str] = UrlOpt, api_key: Optional[str] = KeyOpt) -> None:
    """Show a batch (JSON)."""
    with _client(url, api_key) as client:
        print(json.dumps(_check(client.get(f"/v1/batches/{batch_id}")), indent=2))


@openai_app.command("results")
def openai_results(batch_id: str, errors: bool = typer.Option(False, help="The error file instead"),
                   output: Optional[Path] = typer.Option(None, "-o", help="File to write (default stdout)"),
                   url: Optional[str] = UrlOpt, api_key: Optional[str] = KeyOpt) -> None:
    """Download a batch's output (or error) file."""
    with _client(url, api_key) as client:
        batch = _check(client.get(f"/v1/batches/{batch_id}"))
        file_id = batch["error_file_id" if errors else "output_file_id"]
        if not file_id:
            Console(stderr=True).print(f"no {'error' if errors else 'output'} file (status {batch['status']})")
            raise typer.Exit(1)
        with client.stream("GET", f"/v1/files/{file_id}/content") as r:
            _write(r.iter_bytes(), output)


@openai_app.command("cancel")
def openai_cancel(batch_id: str, url: Optional[str] = UrlOpt, api_key: Optional[str] = KeyOpt) -> None:
    """Cancel a batch."""
    with _client(url, api_key) as client:
        print(_check(client.post(f"/v1/batches/{batch_id}/cancel"))["status"])
