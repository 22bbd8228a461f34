"""Fixtures of the access tests: a fake upstream, a gateway with access control on, an admin client."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.testing.fake_openai import Behaviour, FakeOpenAI
from lmops.testing.server import ServerThread

PRICES = {"fake": {"input": 1000.0, "output": 2000.0}}  # $ per 1M tokens: $0.001 per input, $0.002 per output token


def make_key() -> str:
    return f"lmops-{secrets.token_hex(4)}-{secrets.token_urlsafe(24)}"


@dataclass
class Gateway:
    """A running gateway with access control, its admin key and helpers to manage principals."""

    srv: ServerThread
    admin_key: str
    app: Any
    keys: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.srv.url

    def admin(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key or self.admin_key}"}
        return httpx.request(method, f"{self.url}/admin{path}", headers=headers, timeout=30, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self.admin(method, path, **kwargs)
        assert resp.status_code in (200, 201), resp.text
        return resp.json()

    def team(self, name: str | None = None, **limits: Any) -> dict[str, Any]:
        team = self.ok("POST", "/teams", json={"name": name or f"team-{secrets.token_hex(3)}"})
        if limits:
            self.ok("PUT", f"/limits/team/{team['id']}", json=limits)
        return team

    def key(self, team: str, *, scopes: list[str] | None = None, user: str | None = None,
            **limits: Any) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"team": team}
        if scopes is not None:
            body["scopes"] = scopes
        if user is not None:
            body["user"] = user
        row = self.ok("POST", "/keys", json=body)
        if limits:
            self.ok("PUT", f"/limits/key/{row['id']}", json=limits)
        self.keys.append(row["key"])
        return row["key"], row

    def client(self, key: str, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **kwargs)

    @property
    def services(self) -> Any:
        return self.app.state.services


@pytest.fixture
def upstream(serve) -> tuple[ServerThread, FakeOpenAI]:
    fake = FakeOpenAI(Behaviour())
    return serve(fake), fake


@pytest.fixture
def start_gateway(serve, settings_factory, upstream, monkeypatch):
    """``gw = start_gateway(database_url=..., **settings)``: a gateway in front of the fake upstream."""
    srv_up, _ = upstream

    def start(**overrides: Any) -> Gateway:
        admin_key = make_key()
        monkeypatch.setenv("LMOPS_ADMIN_KEY", admin_key)
        access = {"enabled": True, "key_cache_ttl": 0.5, "prices": PRICES,
                  "redis_prefix": f"t{secrets.token_hex(4)}", **overrides.pop("access", {})}
        models = overrides.pop("models", [{"name": "fake", "engine": "openai", "replicas": [f"{srv_up.url}/v1"],
                                           "context_length": 512},
                                          {"name": "other", "engine": "openai", "replicas": [f"{srv_up.url}/v1"],
                                           "context_length": 512}])
        settings = settings_factory(models, access=access, **overrides)
        if settings.access.secret_file:  # PostgreSQL: the CLI, run against the same database, reads it too
            monkeypatch.setenv("LMOPS_SECRET_FILE", settings.access.secret_file)
        app = create_app(settings)
        return Gateway(serve(app), admin_key, app)

    return start


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    """Run a test on SQLite and on PostgreSQL (a fresh database on the local server)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'access.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def gateway(start_gateway, database_url) -> Gateway:
    return start_gateway(database_url=database_url)


@pytest.fixture
def headers_gateway(start_gateway, database_url) -> Gateway:
    """A gateway that sends x-ratelimit-* on every response of a limited key, as OpenAI does."""
    return start_gateway(database_url=database_url, access={"rate_limit_headers": "always"})
