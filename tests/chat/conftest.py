"""Fixtures of the chat tests: a gateway with access control in front of the fake upstream, users who sign in."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from access.conftest import Gateway, database_url, make_key, start_gateway, upstream  # noqa: F401

PASSWORD = "correct horse battery"


@dataclass
class Browser:
    """A signed-in browser: its cookies, and the session's CSRF token sent on state-changing requests."""

    http: httpx.Client
    csrf: str
    user: dict[str, Any]

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"x-csrf-token": self.csrf, **kw.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.send(method, path, **kw) if method != "GET" else self.get(path, **kw)
        assert resp.status_code in (200, 201), resp.text
        return resp.json()

    def ask(self, conversation: str, content: str, **extra: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Send a message; the stream's chunks and its final event."""
        resp = self.send("POST", f"/api/chat/conversations/{conversation}/messages",
                         json={"content": content, **extra}, timeout=30)
        assert resp.status_code == 200, resp.text
        return sse(resp.text)


def sse(text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events = [orjson.loads(line[6:]) for line in text.split("\n")
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert text.rstrip().endswith("data: [DONE]"), text[-300:]
    return events[:-1], events[-1]


def make_user(gw: Gateway, team_id: str, name: str | None = None, password: str = PASSWORD) -> dict[str, Any]:
    user = gw.ok("POST", "/users", json={"name": name or f"u{secrets.token_hex(3)}", "team": team_id})
    resp = httpx.put(f"{gw.url}/api/chat/users/{user['name']}/password", json={"password": password},
                     headers={"authorization": f"Bearer {gw.admin_key}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return user


def sign_in(url: str, username: str, password: str = PASSWORD) -> Browser:
    http = httpx.Client(base_url=url, timeout=30)
    resp = http.post("/api/chat/session", json={"username": username, "password": password})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    return Browser(http, body["csrf_token"], body["user"])


@pytest.fixture
def chat_gateway(start_gateway, database_url) -> Gateway:  # noqa: F811
    return start_gateway(database_url=database_url)
