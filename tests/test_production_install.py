"""A production install, done exactly as README.md's "Install with pip" says, works on PostgreSQL.

Its commands are read from the README and run as written (only the venv's path, ``/opt/lmops``, becomes a
temporary folder): a fresh venv, ``pip install .`` of a copy of this checkout (not editable, no dev extra) with the
README's ``CMAKE_ARGS``. Then that venv's ``lmops db upgrade`` and ``lmops serve`` run against a fresh PostgreSQL
database, the engine check of a new build runs, and the README's ``openai`` snippet streams a real chat completion
with the bootstrap admin key. The venv must hold no psycopg: asyncpg is lmops's only PostgreSQL driver.

pip reuses the llama-cpp-python wheel it built before (the Makefile's install puts it in pip's cache), so the
install takes ~2 minutes here; the first one ever compiles llama.cpp (~7 minutes on 2 cores).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from lmops.engines.llamacpp_check import AVX2_CMAKE_ARGS
from lmops.testing.server import free_port

ROOT = Path(__file__).resolve().parents[1]
README_VENV = "/opt/lmops"
ADMIN_KEY = "lmops-prodinst-" + secrets.token_hex(16)  # the README's form, 32 random characters after


def _readme_block(after: str, language: str) -> str:
    readme = (ROOT / "README.md").read_text()
    assert after in readme, f"README.md has no {after!r}"
    found = re.search(rf"```{language}\n(.*?)```", readme.split(after, 1)[1], re.S)
    assert found, f"README.md has no {language} block after {after!r}"
    return found.group(1)


def _install_commands() -> list[str]:
    return [line for line in _readme_block("### Install with pip", "bash").splitlines() if line.strip()]


def test_the_readme_pip_install_builds_llama_cpp_as_the_makefile_does():
    commands = _install_commands()
    assert commands[0] == f"python3 -m venv {README_VENV}"
    assert commands[1] == f'CMAKE_ARGS="{AVX2_CMAKE_ARGS}" {README_VENV}/bin/pip install .'
    makefile = (ROOT / "Makefile").read_text()
    assert f"export CMAKE_ARGS ?= {AVX2_CMAKE_ARGS}\n" in makefile


def _env(**extra: str) -> dict[str, str]:
    """This environment less what points Python at the development tree or venv."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "LMOPS_CONFIG", "LMOPS_ADMIN_KEY", "LMOPS_SECRET",
            "LMOPS_SECRET_FILE", "LMOPS_ENGINE_CHECK_COMMAND")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def _run(command: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.mark.slow
@pytest.mark.postgres
def test_production_install_serves_on_postgresql(tmp_path, pg_url):
    checkout = tmp_path / "lmops"  # a copy: pip builds in the source folder
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".pytest_cache",
        ".ruff_cache", "results", "lmops-data", "*.db"))
    venv = tmp_path / "venv"
    started = time.monotonic()
    for command in _install_commands():
        _run(["bash", "-c", command.replace(README_VENV, str(venv))], timeout=900, cwd=checkout, env=_env())
    installed_in = time.monotonic() - started
    python, lmops = venv / "bin" / "python", venv / "bin" / "lmops"

    where = _run([str(python), "-c", "import importlib.util as u, lmops; print(lmops.__file__); "
                                     "print(u.find_spec('psycopg'), u.find_spec('psycopg2'))"],
                 timeout=60, cwd=tmp_path, env=_env()).stdout.split("\n")
    assert where[0].startswith(str(venv)), where  # the installed copy, not this checkout
    assert where[1] == "None None"  # no synchronous PostgreSQL driver

    env = _env(LMOPS_DATABASE_URL=pg_url, LMOPS_ADMIN_KEY=ADMIN_KEY, LMOPS_SECRET=secrets.token_hex(16),
               LMOPS_CACHE_DIR=str(tmp_path / "cache"))
    upgraded = _run([str(lmops), "db", "upgrade"], timeout=120, cwd=tmp_path, env=env)
    assert re.search(r"database at revision\s+\S+", upgraded.stdout) and "None" not in upgraded.stdout

    port = free_port()
    server = subprocess.Popen([str(lmops), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[1][-5000:]
            assert time.monotonic() < deadline, "lmops serve was not ready in 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        snippet = _readme_block("With the official `openai` client", "python").replace("127.0.0.1:8000",
                                                                                         f"127.0.0.1:{port}")
        chat = _run([str(python), "-c", snippet], timeout=120, cwd=tmp_path, env={**env, "LMOPS_API_KEY": ADMIN_KEY})
        answer, _, usage = chat.stdout.rstrip("\n").rpartition("\n")
        assert answer.strip(), chat.stdout
        assert re.search(r"completion_tokens=[1-9]", usage), chat.stdout
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "checking that llama.cpp runs on this CPU" in err  # the new build was checked before serving
    assert "the admin key from $LMOPS_ADMIN_KEY is registered (prefix prodinst)" in err
    print(f"pip install of lmops: {installed_in:.0f} s")
