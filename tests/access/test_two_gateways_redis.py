"""Two ``lmops serve`` processes share rate limits through one Redis; the first start prints an admin key once."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from lmops.testing.server import free_port

from .helpers import CHAT, clear_of_minute_boundary

pytestmark = [pytest.mark.redis, pytest.mark.slow]
KEY_RE = re.compile(r"lmops-[a-z0-9]{8}-[A-Za-z0-9_-]{16,}")


class Gateway:
    def __init__(self, config: Path, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lmops", "serve", "--config", str(config),
                                      "--port", str(self.port)], env=env, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self._out.close()
        return self.log.read_text()


def test_rate_limit_shared_by_two_gateway_processes(tmp_path, upstream, redis_url):
    config = tmp_path / "lmops.yaml"
    config.write_text(yaml.safe_dump({
        "database_url": f"sqlite:///{tmp_path / 'shared.db'}",
        "models": [{"name": "fake", "engine": "openai", "replicas": [f"{upstream[0].url}/v1"]}],
        "access": {"redis_prefix": f"t{secrets.token_hex(4)}", "key_cache_ttl": 1, "rate_limit_headers": "always"},
        "usage": {"flush_interval": 0.1},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMOPS_")}
    env.update(LMOPS_REDIS_URL=redis_url, LMOPS_SECRET=secrets.token_hex(16))
    a = Gateway(config, env, tmp_path / "a.log")
    b = None
    try:
        b = Gateway(config, env, tmp_path / "b.log")
        printed = KEY_RE.findall(a.log.read_text())
        assert len(printed) == 1, "the first start prints one admin key"
        admin = {"authorization": f"Bearer {printed[0]}"}
        team = httpx.post(f"{a.url}/admin/teams", json={"name": "shared"}, headers=admin).json()
        httpx.put(f"{a.url}/admin/limits/team/{team['id']}", json={"rpm": 4}, headers=admin).raise_for_status()
        key = httpx.post(f"{b.url}/admin/keys", json={"team": team["id"]}, headers=admin).json()["key"]
        clients = [openai.OpenAI(base_url=f"{g.url}/v1", api_key=key, max_retries=0) for g in (a, b)]

        clear_of_minute_boundary()
        remaining = []
        for client in (clients[0], clients[1], clients[0], clients[1]):
            raw = client.chat.completions.with_raw_response.create(model="fake", messages=CHAT, max_tokens=5)
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["3", "2", "1", "0"]
        for client in clients:
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="fake", messages=CHAT, max_tokens=5)
    finally:
        logs = [a.stop()] + ([b.stop()] if b else [])
    assert not KEY_RE.findall(logs[1]), "the second start prints no key"
    assert all(KEY_RE.findall(line) == [] for line in logs[0].splitlines() if line.startswith("{")), \
        "no key in the JSON logs"
    assert key not in "".join(logs)
