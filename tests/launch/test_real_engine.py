"""A real engine (llama-cpp-python's server on the bundled GGUF) launched from a spec: ready, answering, registered
as a gateway replica, and stopped with its whole process group; engines that die or hang at start."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from lmops.app import create_app
from lmops.cli import app as cli
from lmops.engines.bundled_model import default_model_path
from lmops.launch.command import EngineCommand
from lmops.launch.process import EngineFailed, EngineProcess
from lmops.launch.register import replica_entry
from lmops.launch.spec import EngineSpec
from lmops.launch.translate import translate
from lmops.testing.server import ServerThread, free_port
from lmops.testing.settings import make_settings

READY_TIMEOUT = 60.0  # the 135M model loads in about a second; the CI machine is slow and loaded


def _spec(**overrides: object) -> EngineSpec:
    data: dict[str, object] = {"engine": "llama-cpp-python", "model": default_model_path(), "served_name": "smol",
                               "context_length": 512, "max_sequences": 1, "port": free_port(),
                               "extra_args": ["--n_threads", "1"]}
    return EngineSpec(**{**data, **overrides})


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _ask(base_url: str, model: str) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=60)
    return client.chat.completions.create(model=model, max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": "Say hello."}])


def test_a_launched_engine_answers_is_registered_as_a_replica_and_stops_with_its_group(tmp_path: Path):
    spec = _spec()
    cmd = translate(spec)
    out = io.StringIO()
    engine = EngineProcess(cmd, spec.base_url, out=out, prefix=spec.engine)
    engine.start()
    try:
        assert engine.wait_ready(READY_TIMEOUT)
        direct = _ask(f"{spec.base_url}/v1", "smol")
        assert direct.choices[0].message.content and direct.usage and direct.usage.completion_tokens >= 1

        entry = replica_entry(spec, cmd, "launched")
        settings = make_settings(tmp_path, [entry])
        with ServerThread(create_app(settings)) as gateway:
            through = _ask(f"{gateway.url}/v1", "launched")
        assert through.model == "launched"
        assert through.choices[0].message.content == direct.choices[0].message.content  # greedy: the same answer
    finally:
        code = engine.stop(grace=10)
    assert code is not None and _group_gone(engine.pid)
    logs = out.getvalue().splitlines()
    assert logs and all(line.startswith("[llama-cpp-python] ") for line in logs)
    assert any("/v1/chat/completions" in line for line in logs)  # the engine's access log, streamed


def test_the_cli_runs_the_engine_until_ctrl_c_then_stops_its_group(tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    port = free_port()
    spec.write_text(f"engine: llama-cpp-python\nmodel: {default_model_path()}\nserved_name: smol\n"
                    f"context_length: 512\nmax_sequences: 1\nport: {port}\nextra_args: [--n_threads, '1']\n")
    stdout, stderr = tmp_path / "out.log", tmp_path / "err.log"
    with stdout.open("wb") as o, stderr.open("wb") as e:
        launcher = subprocess.Popen([sys.executable, "-m", "lmops", "engine", "launch", str(spec)], stdout=o,
                                    stderr=e, start_new_session=True)  # its own group, as a terminal's job is
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while "ready:" not in stderr.read_text():
            assert launcher.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
        assert _ask(f"http://127.0.0.1:{port}/v1", "smol").choices[0].message.content
        engine_pid = int(re.search(r"engine pid (\d+)", stderr.read_text()).group(1))  # type: ignore[union-attr]
        assert engine_pid != launcher.pid and not _group_gone(engine_pid)
        os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's foreground group: not the engine's
        assert launcher.wait(timeout=30) == 0, stderr.read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert _group_gone(engine_pid)
    assert "stopping the engine" in stderr.read_text() and "engine stopped" in stderr.read_text()
    assert "[llama-cpp-python] " in stdout.read_text()


def test_an_engine_that_dies_at_start_is_a_clear_error_with_its_last_log_lines(tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"engine: llama-cpp-python\nmodel: {tmp_path / 'missing.gguf'}\ncontext_length: 512\n"
                    f"max_sequences: 1\nport: {free_port()}\n")
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(cli, ["engine", "launch", str(spec), "--ready-timeout", str(READY_TIMEOUT)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "the engine exited with status 1 before it was ready; its last log lines:" in result.stderr
    assert f"Model path does not exist: {tmp_path / 'missing.gguf'}" in result.stderr
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # given back


def test_an_engine_not_ready_in_time_is_reported_and_killed_when_it_ignores_sigterm():
    port = free_port()
    cmd = EngineCommand(["sh", "-c", "trap '' TERM; echo loading forever; sleep 60 & wait; sleep 60"])
    engine = EngineProcess(cmd, f"http://127.0.0.1:{port}", out=io.StringIO())
    engine.start()
    with pytest.raises(EngineFailed) as info:
        engine.wait_ready(1.0)
    assert info.value.report() == (f"the engine was not ready at http://127.0.0.1:{port}/v1/models within 1 s; "
                                   "its last log lines:\n  loading forever")
    started = time.monotonic()
    assert engine.stop(grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10 and _group_gone(engine.pid)  # the sleeping child went with it


def test_a_missing_engine_program_is_a_clear_error():
    engine = EngineProcess(EngineCommand(["/nonexistent/vllm", "serve", "m"]), "http://127.0.0.1:1", out=io.StringIO())
    with pytest.raises(EngineFailed, match=r"cannot start '/nonexistent/vllm': No such file or directory \(is the "
                                           r"engine installed\?"):
        engine.start()
    assert engine.stop() is None
