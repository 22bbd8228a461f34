"""Replay: a step runs again with the request its lineage recorded, not with today's workflow definition; it says
when the workflow (or the step) changed since, and can run the current definition beside it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from rich.console import Console
from sqlalchemy import create_engine as create_sync_engine, text
from typer.testing import CliRunner

from batch_helpers import wait_for
from lmops.app import create_app
from lmops.batch.catalogue import products
from lmops.batch.cli import show_replay
from lmops.batch.replay import Replay, replay
from lmops.batch.workflows import LLMStep, Prompt, PythonStep, Workflow
from lmops.batch.workflows.definition import digest
from lmops.batch.workflows.examples import COPYWRITING
from lmops.services import Services
from lmops.store.database import upgrade
from lmops.testing.fake_openai import FakeOpenAI, receive_body

SRC = Path(__file__).resolve().parents[2] / "src"


class EchoFake(FakeOpenAI):
    """The fake upstream, except that a chat completion answers with what it was asked (its last message and
    sampling params), so that an output shows which prompt made it; keeps every chat request body it received."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await super().__call__(scope, receive, send)
            return
        body = orjson.loads(await receive_body(receive))
        self.bodies.append(body)
        text_ = (f"{body['messages'][-1]['content']} | temperature={body.get('temperature')} "
                 f"seed={body.get('seed')} max_tokens={body.get('max_tokens')}")
        answer = orjson.dumps({
            "id": "chatcmpl-echo", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text_}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def fake(serve):  # the batch conftest's settings point at this upstream
    engine = EchoFake()
    srv = serve(engine)
    srv.engine = engine
    return srv


FLOWS = '''
from lmops.batch.workflows import LLMStep, Prompt, PythonStep, Workflow


def tidy(record, outputs, params):
    return record["title"].strip().lower()


def register(registry):
    registry.register(Workflow("pitch", (
        PythonStep("tidy", fn=tidy),
        LLMStep("pitch", after=("tidy",), prompt=Prompt({version!r}, {user!r}, system="You sell."), params={params!r}),
    )), params={{"audience": "cats"}})
'''
V1 = {"version": "pitch-v1", "user": "Sell {{ tidy }} to {{ params.audience }}.",
      "params": {"max_tokens": 8, "temperature": 0}}
V2 = {"version": "pitch-v2", "user": "Write a rhyme about {{ tidy }} for {{ params.audience }}!",
      "params": {"max_tokens": 12, "temperature": 0.5}}


def pitch_v2() -> Workflow:
    return Workflow("pitch", (
        PythonStep("tidy", fn=lambda record, outputs, params: record["title"].strip().lower()),
        LLMStep("pitch", after=("tidy",), prompt=Prompt(V2["version"], V2["user"], system="You sell."),
                params=V2["params"])))


@pytest.fixture
def flows(tmp_path, monkeypatch) -> Path:
    """A workflow module (v1 of workflow ``pitch``) importable here and by ``lmops`` subprocesses."""
    name = f"replay_flows_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    path.write_text(FLOWS.format(**V1))
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


@pytest.fixture
def job(batch_settings, flows, serve, fake):
    """A finished job of workflow ``pitch`` (v1) over 2 records, run with seed 7 by the in-process worker."""
    return run_job(batch_settings, flows, serve, fake)


def run_job(batch_settings: Any, flows: Path, serve: Any, fake: Any, database_url: str | None = None) -> dict:
    settings = batch_settings(database_url, workflow_modules=[flows.stem])
    api = serve(create_app(services=Services.build(settings)))
    records = [{**p, "title": f"  {p['title']}  "} for p in products(2)]
    created = httpx.post(f"{api.url}/v1/enrichment/jobs",
                         json={"workflow": "pitch", "records": records, "params": {"seed": 7}}).json()
    done = wait_for(lambda: (j := httpx.get(f"{api.url}/v1/enrichment/jobs/{created['id']}").json())["status"]
                    == "completed" and j)
    assert done["progress"]["done"] == 2, done
    entries = httpx.get(f"{api.url}/v1/enrichment/jobs/{created['id']}/results").json()["data"]
    fake.engine.bodies.clear()
    return {"settings": settings, "id": created["id"], "entries": entries, "records": records,
            "db": settings.database_url.split("///", 1)[-1]}


def run_replay(settings: Any, item: int, step: str, *, current: bool = False,
               registered: Workflow | None = None) -> Replay:
    """Replay in a Services of its own (as ``lmops replay`` does); ``registered`` replaces the workflow first."""
    async def go() -> Replay:
        svc = Services.build(settings.model_copy(update={"batch": settings.batch.model_copy(
            update={"worker_in_process": False})}))
        await svc.start(migrate=False)
        try:
            if registered is not None:
                svc.batch.registry.register(registered, params={"audience": "cats"})
            return await replay(svc.batch, item, step, current=current)
        finally:
            await svc.stop()

    return asyncio.run(go())


def result_row(db: str, item: int, step: str) -> sqlite3.Row:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM batch_results WHERE item_id = ? AND step = ?", (item, step)).fetchone()


def sent_like(received: dict[str, Any], recorded: dict[str, Any]) -> bool:
    """The engine received the recorded request: every recorded field, the same."""
    return all(received.get(k) == v for k, v in recorded.items())


def test_lineage_records_the_exact_request_and_definition_hashes(job):
    item = job["entries"][0]["item_id"]
    row = result_row(job["db"], item, "pitch")
    request = orjson.loads(row["request"])
    assert request["endpoint"] == "/v1/chat/completions"
    assert request["body"] == {"model": "fake", "max_tokens": 8, "temperature": 0, "seed": 7, "messages": [
        {"role": "system", "content": "You sell."},
        {"role": "user", "content": f"Sell {job['records'][0]['title'].strip().lower()} to cats."}]}
    assert row["step_hash"] and len(row["step_hash"]) == 16
    tidy = result_row(job["db"], item, "tidy")
    assert tidy["request"] is None and tidy["step_hash"] and tidy["step_hash"] != row["step_hash"]
    assert orjson.loads(tidy["inputs"]) == {"record": job["records"][0]}
    with sqlite3.connect(job["db"]) as conn:
        (version,) = conn.execute("SELECT workflow_hash FROM batch_jobs WHERE id = ?", (job["id"],)).fetchone()
    assert version and len(version) == 16


def test_replay_reproduces_the_recorded_output(job, fake):
    item = job["entries"][0]["item_id"]
    r = run_replay(job["settings"], item, "pitch")
    assert r.as_recorded and r.error is None and r.same
    assert r.replayed.output == r.recorded.output == job["entries"][0]["outputs"]["pitch"]
    assert r.workflow_changed is False and r.step_changed is False
    assert any("unchanged since the job was submitted" in n for n in r.notes)
    [received] = fake.engine.bodies
    assert sent_like(received, r.recorded.request["body"])


def test_replay_uses_the_recorded_request_after_the_workflow_changed(job, fake):
    item = job["entries"][1]["item_id"]
    recorded_body = orjson.loads(result_row(job["db"], item, "pitch")["request"])["body"]
    r = run_replay(job["settings"], item, "pitch", current=True, registered=pitch_v2())

    assert r.as_recorded and r.same  # the v1 prompt and params, not the v2 ones registered now
    assert "Sell " in r.replayed.output and "temperature=0 seed=7 max_tokens=8" in r.replayed.output
    assert r.workflow_changed is True and r.step_changed is True
    assert any("changed since the job was submitted" in n for n in r.notes)
    assert any("step 'pitch' changed since this result was recorded" in n for n in r.notes)
    replayed, now = fake.engine.bodies  # the recorded request first, then the current definition's
    assert sent_like(replayed, recorded_body) and replayed["messages"] == recorded_body["messages"]

    assert r.current is not None and r.current_error is None and r.current_same is False
    assert now["messages"][-1]["content"].startswith("Write a rhyme about") and now["temperature"] == 0.5
    assert now["seed"] == 7  # the job's seed still applies
    assert r.current.output.startswith("Write a rhyme about") and r.current.prompt_version == "pitch-v2"
    assert r.current.step_hash != r.recorded.step_hash

    console = Console(record=True, width=300)
    show_replay(r, console)
    out = console.export_text()
    for text_ in ("recorded", "replayed as recorded", "current definition", "pitch-v1", "pitch-v2",
                  "same output as recorded", "+++ current definition", "changed since the job was submitted"):
        assert text_ in out, text_


def test_lineage_and_replay_on_postgresql(batch_settings, flows, serve, fake, pg_url):
    job = run_job(batch_settings, flows, serve, fake, pg_url)
    r = run_replay(job["settings"], job["entries"][0]["item_id"], "pitch", current=True, registered=pitch_v2())
    assert r.recorded.request["body"]["seed"] == 7 and r.recorded.step_hash  # written by the PostgreSQL settle
    assert r.as_recorded and r.same and r.workflow_changed is True and r.step_changed is True
    assert sent_like(fake.engine.bodies[0], r.recorded.request["body"])
    assert r.current is not None and r.current.output.startswith("Write a rhyme about")


def test_a_python_step_replays_with_todays_code_and_says_so(job):
    item = job["entries"][0]["item_id"]
    r = run_replay(job["settings"], item, "tidy")
    assert not r.as_recorded and r.same and r.replayed.output == job["records"][0]["title"].strip().lower()
    assert any("python step's code is not recorded" in n for n in r.notes)


def test_results_recorded_before_the_migration_replay_as_defined_today(job, fake):
    item = job["entries"][0]["item_id"]
    with sqlite3.connect(job["db"]) as conn:  # what a result written before migration 0005 looks like
        conn.execute("UPDATE batch_results SET request = NULL, step_hash = NULL WHERE item_id = ?", (item,))
        conn.execute("UPDATE batch_jobs SET workflow_hash = NULL WHERE id = ?", (job["id"],))
    r = run_replay(job["settings"], item, "pitch", current=True, registered=pitch_v2())
    assert not r.as_recorded and not r.same
    assert any("recorded before results kept their model request" in n for n in r.notes)
    assert any("submitted before workflow versions were recorded" in n for n in r.notes)
    assert r.workflow_changed is None and r.step_changed is None
    [received] = fake.engine.bodies  # one run: the current definition, shown once
    assert received["messages"][-1]["content"].startswith("Write a rhyme about")
    assert r.current is r.replayed


def test_an_openai_batch_request_replays_as_it_is(batch_settings, serve, fake):
    import openai

    from lmops.batch.catalogue import batch_lines

    settings = batch_settings()
    api = serve(create_app(services=Services.build(settings)))
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="-", max_retries=0)
    data = b"".join(orjson.dumps(line) + b"\n" for line in batch_lines(1, "fake"))
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: client.batches.retrieve(b.id).status == "completed")
    with sqlite3.connect(settings.database_url.split("///", 1)[1]) as conn:
        (item, payload) = conn.execute("SELECT id, payload FROM batch_items WHERE job_id = ?", (b.id,)).fetchone()
    fake.engine.bodies.clear()
    r = run_replay(settings, item, "request", current=True)
    assert r.as_recorded and r.error is None and r.step_changed is False and r.current is None
    assert r.replayed.output["body"]["choices"] == r.recorded.output["body"]["choices"]
    assert sent_like(fake.engine.bodies[0], orjson.loads(payload))


def test_replay_errors_are_readable(job):
    item = job["entries"][0]["item_id"]
    settings = job["settings"]
    for args, message in ((("999999", "pitch"), "no item 999999"),
                          ((str(item), "nope"), "has no step 'nope'; steps: tidy, pitch")):
        with pytest.raises(LookupError, match=message):
            run_replay(settings, int(args[0]), args[1])
    with sqlite3.connect(job["db"]) as conn:  # an item not claimed yet (not claimable before long either)
        pending = conn.execute(
            "INSERT INTO batch_items (job_id, team_id, workflow, seq, payload, status, attempts, available_at,"
            " created_at) VALUES (?, 'default', 'pitch', 99, '{}', 'pending', 0, 1e12, 0)", (job["id"],)).lastrowid
    with pytest.raises(LookupError, match=f"item {pending} has not run yet"):
        run_replay(settings, pending, "pitch")


def test_cli_replay(job, flows, tmp_path):
    from lmops.cli import app

    config = tmp_path / "lmops.yaml"
    config.write_text(yaml.safe_dump(job["settings"].model_dump(mode="json", exclude={"config"})))
    runner = CliRunner()
    item = job["entries"][0]["item_id"]
    for args, message in ((["999999", "pitch"], "no item 999999"),
                          ([str(item), "nope"], "has no step 'nope'")):
        res = runner.invoke(app, ["replay", *args, "-c", str(config)])
        assert res.exit_code == 1, res.output
        assert message in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["replay", str(item), "pitch", "-c", str(config)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "replayed as recorded" in res.output and "same output as recorded" in res.output
    assert "unchanged since the job was submitted" in res.output

    flows.write_text(FLOWS.format(**V2))  # a new deployment: the workflow is v2 now
    env = {**os.environ, "COLUMNS": "250",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "lmops", "replay", str(item), "pitch", "--current",
                          "-c", str(config)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "changed since the job was submitted" in out.stdout
    assert "same output as recorded" in out.stdout  # the recorded v1 request
    assert "pitch-v1" in out.stdout and "pitch-v2" in out.stdout and "+++ current definition" in out.stdout
    assert "+Write a rhyme about" in out.stdout


def test_definition_hashes_follow_the_definition_not_the_process():
    base = LLMStep("s", prompt=Prompt("v1", "Hi {{ record.x }}"), params={"temperature": 0})
    assert digest(base) == digest(LLMStep("s", prompt=Prompt("v1", "Hi {{ record.x }}"), params={"temperature": 0}))
    for changed in (LLMStep("s", prompt=Prompt("v2", "Hi {{ record.x }}"), params={"temperature": 0}),
                    LLMStep("s", prompt=Prompt("v1", "Hello {{ record.x }}"), params={"temperature": 0}),
                    LLMStep("s", prompt=Prompt("v1", "Hi {{ record.x }}"), params={"temperature": 0.2}),
                    LLMStep("s", prompt=Prompt("v1", "Hi {{ record.x }}"), params={"temperature": 0}, model="m"),
                    LLMStep("s", prompt=Prompt("v1", "Hi {{ record.x }}"), params={"temperature": 0},
                            parse=str.upper)):
        assert digest(changed) != digest(base)
    assert digest(PythonStep("p", fn=lambda r, o, p: r["a"])) != digest(PythonStep("p", fn=lambda r, o, p: r["b"]))
    assert COPYWRITING.version() != COPYWRITING.version({"guidelines": {"tone": "dry"}})
    # The same in another process, whatever its string hashing: workers, gateways and replay agree.
    code = ("from lmops.batch.workflows.examples import COPYWRITING as W; "
            "print(W.version(), sorted(W.step_hashes.items()))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(SRC)})
    assert other.stdout.strip() == f"{COPYWRITING.version()} {sorted(COPYWRITING.step_hashes.items())}", other.stderr


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lineage.db'}"
    return request.getfixturevalue("pg_url")


def test_migration_0005_adds_and_removes_the_lineage_columns(database_url):
    from alembic import command

    from lmops.store.database import alembic_config

    sync_url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    upgrade(database_url, "0004_ledger_in_records")
    engine = create_sync_engine(sync_url)
    try:
        with engine.begin() as conn:  # a job, an item and a result written before 0005
            conn.execute(text("INSERT INTO batch_jobs (id, team_id, kind, workflow, input_file_id, completion_window,"
                              " status, created_at)"
                              " VALUES ('job_1', 't', 'enrichment', 'w', 'f', '24h', 'completed', 1)"))
            conn.execute(text("INSERT INTO batch_items (job_id, team_id, workflow, seq, payload, status,"
                              " available_at, created_at) VALUES ('job_1', 't', 'w', 1, '{}', 'done', 0, 0)"))
            conn.execute(text("INSERT INTO batch_results (item_id, step, job_id, status, created_at)"
                              " SELECT id, 's', 'job_1', 'ok', 0 FROM batch_items"))
        upgrade(database_url)
        with engine.connect() as conn:
            row = conn.execute(text("SELECT request, step_hash FROM batch_results")).one()
            assert tuple(row) == (None, None)
            assert conn.execute(text("SELECT workflow_hash FROM batch_jobs")).scalar() is None
        command.downgrade(alembic_config(database_url), "0004_ledger_in_records")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM batch_items")).scalar() == 1  # no cascade on the way
            assert conn.execute(text("SELECT count(*) FROM batch_results")).scalar() == 1
            for table, column in (("batch_jobs", "workflow_hash"), ("batch_results", "request"),
                                  ("batch_results", "step_hash")):
                with pytest.raises(Exception, match="(?i)column|no such"):
                    conn.execute(text(f"SELECT {column} FROM {table}"))
                conn.rollback()
        upgrade(database_url)  # and up again
    finally:
        engine.dispose()
