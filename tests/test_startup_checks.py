"""What ``lmops serve`` checks before serving: the admin key and the server secret given in the environment.

README.md documents ``LMOPS_ADMIN_KEY`` as ``lmops-<8 lowercase letters/digits>-<16+ characters>``: a key of
exactly that minimum starts the server and works; a key not of that form stops it with a clear message.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lmops.access.keys import KeyHasher
from lmops.testing.fake_openai import FakeOpenAI
from lmops.testing.server import free_port

MINIMUM_KEY = "lmops-abcd2345-" + "k" * 16  # the README's form, at its documented minimum

CONFIG = """\
database_url: sqlite:///{db}
models:
  - name: fake
    engine: openai
    replicas: ["{url}"]
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LMOPS_ADMIN_KEY", "LMOPS_SECRET")}
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


def test_lmops_serve_takes_a_minimum_admin_key_and_explains_the_missing_secret(serve, tmp_path):
    up = serve(FakeOpenAI())
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lmops", "serve", "--config", str(_config(tmp_path, f"{up.url}/v1")),
                             "--port", str(port)], env=_env(LMOPS_ADMIN_KEY=MINIMUM_KEY),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "lmops serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {MINIMUM_KEY}"},
                          json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200, resp.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "the admin key from $LMOPS_ADMIN_KEY is registered (prefix abcd2345)" in err
    # the warning says what the secret is for and how to set it
    assert "$LMOPS_SECRET is not set: API keys are stored as HMACs under a secret generated into the database" in err
    assert "set $LMOPS_SECRET to 16 or more random characters" in err and "secrets.token_hex(32)" in err
