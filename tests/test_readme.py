"""The README's "Call it" snippets, run as written against a gateway with access control serving the embedded
model (only the address is changed): what the README shows must work and print what it promises."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from lmops.app import create_app

README = (Path(__file__).parents[1] / "README.md").read_text()
DEFAULT_URL = "http://127.0.0.1:8000"


def snippet(language: str, contains: str) -> str:
    """The README's fenced ``language`` block that contains ``contains``."""
    blocks = [b for b in re.findall(rf"```{language}\n(.*?)```", README, re.S) if contains in b]
    assert len(blocks) == 1, f"expected one {language} block with {contains!r} in README.md, found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def readme_gateway(tmp_path_factory):
    from lmops.testing.server import ServerThread
    from lmops.testing.settings import make_settings

    key = f"lmops-{secrets.token_hex(4)}-{secrets.token_urlsafe(24)}"
    os.environ["LMOPS_ADMIN_KEY"] = key
    try:
        settings = make_settings(tmp_path_factory.mktemp("readme"),
                                 [{"name": "smollm2", "engine": "embedded", "context_length": 1024}],
                                 access={"enabled": True})
        srv = ServerThread(create_app(settings)).start()
    finally:
        del os.environ["LMOPS_ADMIN_KEY"]
    yield srv, key
    srv.stop()


def _env(key: str) -> dict[str, str]:
    return {**os.environ, "LMOPS_API_KEY": key}


def test_the_streaming_python_snippet_prints_the_answer_then_the_usage(readme_gateway):
    srv, key = readme_gateway
    code = snippet("python", "stream=True").replace(DEFAULT_URL, srv.url)
    out = subprocess.run([sys.executable, "-c", code], env=_env(key), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answer, _, usage = out.stdout.rstrip("\n").rpartition("\n")
    assert answer.strip(), out.stdout  # the streamed text, before the usage line
    assert "None" not in answer  # no chunk without content printed as "None"
    assert re.search(r"completion_tokens=\d+", usage) and "prompt_tokens=" in usage, out.stdout


def test_the_curl_snippet_answers(readme_gateway):
    srv, key = readme_gateway
    cmd = snippet("bash", "curl ").replace(DEFAULT_URL, srv.url)
    out = subprocess.run(["bash", "-c", cmd], env=_env(key), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"choices"' in out.stdout and '"assistant"' in out.stdout, out.stdout


def test_the_catalogue_example_runs_as_shown(readme_gateway, tmp_path):
    """The README's products.jsonl lines through its `lmops batch submit` and `lmops batch results` commands."""
    srv, key = readme_gateway
    (tmp_path / "products.jsonl").write_text(snippet("json", '"sku"'))
    commands = snippet("bash", "batch submit").splitlines()
    submit, results = [line.split("#")[0].split(">")[0].split() for line in commands]
    env = {**_env(key), "LMOPS_URL": srv.url}
    lmops = [sys.executable, "-m", "lmops"]
    assert submit[0] == results[0] == ".venv/bin/lmops"
    out = subprocess.run([*lmops, *submit[1:]], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert "completed, 2 done, 0 failed" in out.stderr, out.stderr
    assert results[-1] == "JOB_ID"
    out = subprocess.run([*lmops, *results[1:-1], job_id], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["id"] for r in rows) == ["A-1", "A-2"], rows
    assert all(r["status"] == "completed" and r["outputs"]["title"] and r["outputs"]["keywords"] for r in rows), rows
