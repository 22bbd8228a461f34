"""The lmops command line, run as a real process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lmops.testing.fake_openai import FakeOpenAI
from lmops.testing.server import free_port

LMOPS = [sys.executable, "-m", "lmops"]
ADMIN_KEY = "lmops-clitest1-Xq7vR2pLk9TzW4mB8nYc3HsJ6dFg1AeU0oIiKu5"
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LMOPS, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


GOOD = """\
database_url: sqlite:///{db}
models:
  - name: fake
    engine: openai
    upstream_model: up
    replicas: ["{url}"]
    defaults:
      temperature: 0.2
"""

BAD = """\
server:
  port: 99999
models:
  - name: a
    engine: vllm
  - name: b
    engine: openai
    replicas: ["ftp://nope"]
    api_key: "sk-plaintext"
"""


def test_console_script_is_installed():
    assert shutil.which("lmops") or Path(sys.executable).with_name("lmops").exists()


def test_config_check_accepts_a_good_file(tmp_path):
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(GOOD.format(db=tmp_path / "x.db", url="http://127.0.0.1:1/v1"))
    result = run("config", "check", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "fake" in result.stdout


def test_config_check_reports_every_problem_with_its_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BAD)
    result = run("config", "check", "--config", str(cfg))
    assert result.returncode != 0
    err = " ".join(result.stderr.split())
    assert "line 2" in err and "server.port" in err  # port out of range, located at line 2
    assert "models.0.engine" in err and "line 5" in err
    assert "models.1.replicas" in err
    assert "models.1.api_key" in err  # secrets only as env-var references: extra field refused
    assert "Traceback" not in result.stderr


def test_config_check_on_broken_yaml_and_missing_file(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("models:\n  - name: [unclosed\n")
    result = run("config", "check", "--config", str(cfg))
    assert result.returncode != 0 and "line" in result.stderr and "Traceback" not in result.stderr
    missing = run("config", "check", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_env_overrides_the_file_and_lmops_config_is_read(tmp_path):
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(GOOD.format(db=tmp_path / "x.db", url="http://127.0.0.1:1/v1"))
    result = run("config", "check", env={"LMOPS_CONFIG": str(cfg), "LMOPS_SERVER__PORT": "70000"})
    assert result.returncode != 0 and "server.port" in result.stderr


def test_missing_api_key_env_is_reported(tmp_path):
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(GOOD.format(db=tmp_path / "x.db", url="http://127.0.0.1:1/v1") +
                   "    api_key_env: LMOPS_TEST_UNSET_KEY\n")
    result = run("config", "check", "--config", str(cfg))
    assert result.returncode != 0 and "LMOPS_TEST_UNSET_KEY" in result.stderr


def test_no_file_means_the_embedded_default(tmp_path):
    result = run("models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "smollm2" in result.stdout and "embedded" in result.stdout


def test_db_upgrade(tmp_path):
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(GOOD.format(db=tmp_path / "u.db", url="http://127.0.0.1:1/v1"))
    result = run("db", "upgrade", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "revision" in result.stdout
    assert (tmp_path / "u.db").exists()


def test_chat_in_process_streams_the_embedded_model(tmp_path):
    result = run("chat", "What is the capital of France?", "--max-tokens", "12", "--temperature", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 0


def start_serve(cfg: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*LMOPS, "serve", "--config", str(cfg), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LMOPS_ADMIN_KEY": ADMIN_KEY})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"lmops serve did not start: {proc.communicate()[1][-2000:]}")


def test_serve_with_two_workers(serve, tmp_path):
    up = serve(FakeOpenAI())
    port = free_port()
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(GOOD.format(db=tmp_path / "w.db", url=f"{up.url}/v1"))
    proc = start_serve(cfg, port, "--workers", "2")
    try:
        for _ in range(10):
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10, headers=AUTH,
                              json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
            assert resp.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert err.count("Application startup complete") == 2
    # each worker logs its requests as JSON lines (written at the latest when it exits)
    lines = [json.loads(line) for line in err.splitlines() if '"request finished"' in line]
    served = [line for line in lines if line["path"] == "/v1/chat/completions"]
    assert len(served) == 10 and {line["status"] for line in served} == {200}
    assert all(line["request_id"].startswith("req_") and line["model"] == "fake" for line in served)


def test_chat_against_a_running_server(serve, tmp_path):
    up = serve(FakeOpenAI())
    port = free_port()
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(GOOD.format(db=tmp_path / "s.db", url=f"{up.url}/v1"))
    proc = start_serve(cfg, port)
    try:
        url = f"http://127.0.0.1:{port}"
        result = run("chat", "hi", "--url", url, "--config", str(cfg), "--api-key", ADMIN_KEY)
        assert result.returncode == 0, result.stderr
        assert "The quick brown fox jumps over the lazy dog." in result.stdout
        bad = run("chat", "hi", "--url", url, "--model", "nope", "--config", str(cfg), "--api-key", ADMIN_KEY)
        assert bad.returncode != 0 and "does not exist" in bad.stderr
        anonymous = run("chat", "hi", "--url", url, "--config", str(cfg))
        assert anonymous.returncode != 0 and "401" in anonymous.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    assert "Application shutdown complete" in err
    assert url in err and "curl" in err  # prints the URL and how to call it


def test_chat_against_nothing_is_a_readable_error(tmp_path):
    result = run("chat", "hi", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert result.returncode != 0
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr


def test_config_check_reports_settings_that_name_an_undeclared_model(tmp_path):
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text("""\
models:
  - name: qwen
    engine: openai
    replicas: ["http://127.0.0.1:1/v1"]
    adapters: [{name: sql}]
access:
  prices:
    qwen: {input: 1, output: 2}
    qwen-typo: {input: 1, output: 2}
batch:
  default_model: "qwen:sql"
  model_concurrency: {qwen: 4, gone: 2}
""")
    result = run("config", "check", "--config", str(cfg))
    assert result.returncode == 2
    out = " ".join((result.stdout + result.stderr).split())
    assert "line 9, column 16: access.prices.qwen-typo: no model is called 'qwen-typo'" in out
    assert "line 12, column 38: batch.model_concurrency.gone: no model is called 'gone'" in out
    assert "default_model" not in out  # an adapter's public name is a model requests may name
    cfg.write_text(cfg.read_text().replace("    qwen-typo: {input: 1, output: 2}\n", "").replace(", gone: 2", ""))
    assert run("config", "check", "--config", str(cfg)).returncode == 0
