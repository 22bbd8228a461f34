"""What ``lmops serve`` checks before serving: the admin key and the key-hashing secret.

README.md documents ``LMOPS_ADMIN_KEY`` as ``lmops-<8 lowercase letters/digits>-<32+ random characters>``: such a
key starts the server and works; a key not of that form, or a guessable one, stops it with a clear message. On
PostgreSQL the secret must come from outside the database ($LMOPS_SECRET or a secret file); on SQLite lmops makes
one into a private file beside the database. A generated admin key is printed once to the terminal, never into
the (JSON) log lines.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from lmops.access.keys import KeyHasher
from lmops.testing.fake_openai import FakeOpenAI
from lmops.testing.server import free_port

MINIMUM_KEY = "lmops-abcd2345-" + "k" * 16  # the form any key must have, at its minimum
STRONG_KEY = "lmops-abcd2345-" + secrets.token_urlsafe(32)  # what README.md tells to make
NOWHERE_PG = "postgresql://lmops@127.0.0.1:1/lmops"  # never reached: the start is refused before

CONFIG = """\
database_url: sqlite:///{db}
models:
  - name: fake
    engine: openai
    replicas: ["{url}"]
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LMOPS_ADMIN_KEY", "LMOPS_SECRET", "LMOPS_SECRET_FILE")}
    return {**env, "COLUMNS": "200", **extra}


def _config(tmp_path: Path, url: str = "http://127.0.0.1:1/v1") -> Path:
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(CONFIG.format(db=tmp_path / "s.db", url=url))
    return cfg


def _refused(tmp_path: Path, **env: str) -> str:
    run = subprocess.run([sys.executable, "-m", "lmops", "serve", "--config", str(_config(tmp_path)),
                          "--port", str(free_port())], env=_env(**env), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "s.db").exists()  # refused before the database was touched
    return run.stderr


def test_a_key_of_the_documented_minimum_is_adopted():
    hasher = KeyHasher(secrets.token_bytes(32))
    assert hasher.adopt(MINIMUM_KEY).prefix == "abcd2345"
    for bad in (MINIMUM_KEY[:-1], "lmops-abcd234-" + "k" * 17, "lmops-Abcd2345-" + "k" * 16,
                "lmops-abcd2345-" + "k" * 15 + " ", "lmops-abcd2345-" + "k" * 15 + "é"):
        with pytest.raises(ValueError, match="at least 16 more characters"):
            hasher.adopt(bad)


@pytest.mark.parametrize("key", ["lmops-abcd2345-short", "sk-0123456789abcdef0123456789", "lmops-ABCD2345-" + "k" * 20])
def test_a_bad_admin_key_stops_lmops_serve_with_a_clear_message(tmp_path, key):
    err = _refused(tmp_path, LMOPS_ADMIN_KEY=key)
    assert "lmops: cannot start: $LMOPS_ADMIN_KEY is not a valid lmops key: a key must look like lmops-<prefix>-" in err
    assert "exactly 8 lowercase letters and digits, then at least 16 more characters" in err


def test_a_short_secret_stops_lmops_serve_with_a_clear_message(tmp_path):
    err = _refused(tmp_path, LMOPS_SECRET="too-short")
    assert "lmops: cannot start: $LMOPS_SECRET must be at least 16 characters long (it has 9)" in err


@pytest.mark.parametrize("secret", [
    "k" * 16,  # the form's minimum: too short for the key that holds every right
    "k" * 40,  # one character
    "0123456789abcdef" * 2,  # a run
    "passwordX1" * 4,  # a repeated pattern
])
def test_a_guessable_admin_key_stops_lmops_serve(tmp_path, secret):
    err = _refused(tmp_path, LMOPS_ADMIN_KEY=f"lmops-abcd2345-{secret}")
    assert "lmops: cannot start: $LMOPS_ADMIN_KEY is too weak for an admin key: " in err
    assert "secrets.token_urlsafe(32)" in err  # how to make a good one


def test_postgresql_without_a_secret_stops_lmops_serve_naming_both_ways(tmp_path):
    err = _refused(tmp_path, LMOPS_DATABASE_URL=NOWHERE_PG)
    (line,) = [x for x in err.splitlines() if x.startswith("lmops: cannot start:")]
    assert line.startswith("lmops: cannot start: on PostgreSQL the key-hashing secret must come from outside the "
                           "database: set $LMOPS_SECRET to 16 or more random characters")
    assert "or $LMOPS_SECRET_FILE (access.secret_file) to a file holding them" in line


def test_postgresql_without_a_secret_stops_lmops_worker(tmp_path):
    run = subprocess.run([sys.executable, "-m", "lmops", "worker", "--config", str(_config(tmp_path))],
                         env=_env(LMOPS_DATABASE_URL=NOWHERE_PG), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "lmops: cannot start: on PostgreSQL the key-hashing secret must come from outside the database" in run.stderr


def test_postgresql_with_a_missing_secret_file_stops_lmops_serve(tmp_path):
    missing = tmp_path / "nowhere" / "secret"
    err = _refused(tmp_path, LMOPS_DATABASE_URL=NOWHERE_PG, LMOPS_SECRET_FILE=str(missing))
    assert f"lmops: cannot start: the secret file {missing} does not exist: on PostgreSQL lmops does not make one up" \
        in err
    assert not missing.parent.exists()


class Serving:
    """``lmops serve`` in a child process, its stderr (logs and terminal lines) collected as it comes."""

    def __init__(self, cfg: Path, env: dict[str, str]):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "lmops", "serve", "--config", str(cfg), "--port",
                                      str(self.port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, "".join(self.lines)[-3000:]
            assert time.monotonic() < deadline, "lmops serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

    def chat(self, key: str) -> int:
        return httpx.post(f"http://127.0.0.1:{self.port}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]}).status_code

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        return "".join(self.lines)


def test_lmops_serve_takes_a_strong_admin_key_and_never_shows_it(serve, tmp_path):
    up = serve(FakeOpenAI())
    server = Serving(_config(tmp_path, f"{up.url}/v1"), _env(LMOPS_ADMIN_KEY=STRONG_KEY))
    try:
        assert server.chat(STRONG_KEY) == 200
    finally:
        err = server.stop()
    assert "the admin key from $LMOPS_ADMIN_KEY is registered (prefix abcd2345)" in err
    assert STRONG_KEY.split("-", 2)[2] not in err


def test_on_sqlite_lmops_serve_makes_a_private_secret_file_and_shows_a_generated_admin_key_once(serve, tmp_path):
    """The first start makes ``lmops.secret`` (0600) beside the database and prints the admin key it made to the
    terminal once, in no log line; the next start reads the same secret, so the key still verifies."""
    up = serve(FakeOpenAI())
    cfg = _config(tmp_path, f"{up.url}/v1")
    first = Serving(cfg, _env())
    try:
        deadline = time.monotonic() + 10
        while not (shown := [x.strip() for x in first.lines if x.startswith("  lmops-")]):
            assert time.monotonic() < deadline, "".join(first.lines)
            time.sleep(0.05)
        (key,) = shown
        assert first.chat(key) == 200
    finally:
        err = first.stop()
    assert "lmops: created the admin API key (shown only once, store it now):" in err
    assert err.count(key.split("-", 2)[2]) == 1  # shown once, on its own line
    logged = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert any(r.get("msg") == "request finished" for r in logged)  # the log lines are there, as JSON...
    assert not [r for r in logged if key.split("-", 2)[2] in json.dumps(r)]  # ...and the key is in none of them
    secret_file = tmp_path / "lmops.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text()
    assert len(secret.strip()) == 64 and secret.strip() not in err

    second = Serving(cfg, _env())
    try:
        assert second.chat(key) == 200  # stored under the same secret, read back from the file
    finally:
        err = second.stop()
    assert "created the admin API key" not in err and key.split("-", 2)[2] not in err
    assert secret_file.read_text() == secret
