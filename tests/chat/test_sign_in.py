"""Sign-in to the chat API: passwords (argon2), the session cookie's flags, CSRF, API keys, laptop mode."""

from __future__ import annotations

import secrets
import time

import httpx

from lmops.app import create_app
from lmops.testing.server import free_port

from .conftest import PASSWORD, make_user, sign_in


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    return error


def test_sign_in_sets_a_safe_cookie_and_csrf_guards_every_change(chat_gateway):
    gw = chat_gateway
    team = gw.team()
    user = make_user(gw, team["id"])
    anon = httpx.Client(base_url=gw.url, timeout=30)
    wrong = _error(anon.post("/api/chat/session", json={"username": user["name"], "password": "nope-nope"}), 401)
    unknown = _error(anon.post("/api/chat/session", json={"username": "nobody", "password": PASSWORD}), 401)
    assert wrong["message"] == unknown["message"] and wrong["code"] == unknown["code"] == "invalid_credentials"
    assert _error(anon.get("/api/chat/conversations"), 401)["code"] == "not_signed_in"

    resp = anon.post("/api/chat/session", json={"username": user["name"], "password": PASSWORD})
    assert resp.status_code == 201
    cookie = resp.headers["set-cookie"].lower()
    assert "lmops_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain http here; https requests get Secure
    behind_tls = anon.post("/api/chat/session", json={"username": user["name"], "password": PASSWORD},
                           headers={"x-forwarded-proto": "https"})
    assert "; secure" in behind_tls.headers["set-cookie"].lower()
    body = resp.json()
    assert body["user"]["id"] == user["id"] and body["user"]["team_id"] == team["id"] and body["csrf_token"]

    browser = sign_in(gw.url, user["name"])
    # reads need only the cookie; changes need the session's CSRF token
    assert browser.get("/api/chat/conversations").json()["data"] == []
    assert _error(browser.http.post("/api/chat/conversations", json={}), 403)["code"] == "csrf_failed"
    forged = browser.http.post("/api/chat/conversations", json={}, headers={"x-csrf-token": body["csrf_token"]})
    assert _error(forged, 403)["code"] == "csrf_failed"  # another session's token
    created = browser.ok("POST", "/api/chat/conversations", json={"title": "mine"})
    assert created["title"] == "mine"
    assert browser.get("/api/chat/session").json()["csrf_token"] == browser.csrf

    assert _error(browser.http.delete("/api/chat/session"), 403)["code"] == "csrf_failed"
    out = browser.send("DELETE", "/api/chat/session")
    assert out.status_code == 200 and "max-age=0" in out.headers["set-cookie"].lower()
    assert _error(httpx.get(f"{gw.url}/api/chat/conversations", cookies={"lmops_session": "x"}), 401)


def test_an_api_key_works_without_csrf_and_sees_its_users_conversations(chat_gateway):
    gw = chat_gateway
    team = gw.team()
    user = make_user(gw, team["id"])
    key, _ = gw.key(team["id"], user=user["id"])
    headers = {"authorization": f"Bearer {key}"}
    made = httpx.post(f"{gw.url}/api/chat/conversations", json={"title": "by key"}, headers=headers)
    assert made.status_code == 201, made.text
    browser = sign_in(gw.url, user["name"])
    assert [c["title"] for c in browser.get("/api/chat/conversations").json()["data"]] == ["by key"]
    bad = httpx.get(f"{gw.url}/api/chat/conversations", headers={"authorization": "Bearer lmops-nope"})
    assert _error(bad, 401)


def test_setting_a_password_needs_an_administrator_and_ends_sessions(chat_gateway):
    gw = chat_gateway
    team = gw.team()
    user = make_user(gw, team["id"])
    member_key, _ = gw.key(team["id"], user=user["id"])
    browser = sign_in(gw.url, user["name"])
    refused = httpx.put(f"{gw.url}/api/chat/users/{user['id']}/password", json={"password": "x" * 12},
                        headers={"authorization": f"Bearer {member_key}"})
    assert refused.status_code == 403
    short = httpx.put(f"{gw.url}/api/chat/users/{user['id']}/password", json={"password": "short"},
                      headers={"authorization": f"Bearer {gw.admin_key}"})
    assert _error(short, 400)["param"] == "password"
    make_user_again = httpx.put(f"{gw.url}/api/chat/users/{user['id']}/password", json={"password": "new password!"},
                                headers={"authorization": f"Bearer {gw.admin_key}"})
    assert make_user_again.status_code == 200
    assert browser.get("/api/chat/conversations").status_code == 401  # sessions ended with the old password
    sign_in(gw.url, user["name"], "new password!")


def test_laptop_mode_has_one_local_user_who_signs_in_without_a_password(serve, settings_factory, upstream):
    srv_up, _ = upstream
    settings = settings_factory([{"name": "fake", "engine": "openai", "replicas": [f"{srv_up.url}/v1"]}])
    srv = serve(create_app(settings))
    browser = sign_in(srv.url, "", "")
    assert browser.user["id"] == "local"
    conv = browser.ok("POST", "/api/chat/conversations", json={})
    assert browser.http.post("/api/chat/conversations", json={}).status_code == 403  # CSRF still applies
    _, final = browser.ask(conv["id"], "hi")
    assert final["status"] == "complete"
    assert [m["role"] for m in final["messages"]] == ["user", "assistant"]


def test_lmops_users_set_password_lets_the_user_sign_in(chat_gateway, database_url, monkeypatch):
    from typer.testing import CliRunner

    from lmops.cli import app as cli

    gw = chat_gateway
    team = gw.team()
    user = gw.ok("POST", "/users", json={"name": "carol", "team": team["id"]})
    monkeypatch.setenv("LMOPS_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli, ["users", "set-password", "carol", "--password-stdin"], input="s3cret-words\n")
    assert result.exit_code == 0, result.output
    assert "Password set for carol" in result.output
    assert sign_in(gw.url, "carol", "s3cret-words").user["id"] == user["id"]
    short = CliRunner().invoke(cli, ["users", "set-password", "carol", "--password-stdin"], input="short\n")
    assert short.exit_code == 1
    unknown = CliRunner().invoke(cli, ["users", "set-password", "nobody", "--password-stdin"], input="long enough\n")
    assert unknown.exit_code == 1 and "No user" in unknown.output


def test_failed_sign_ins_are_throttled_per_address_and_user(start_gateway, database_url):
    gw = start_gateway(database_url=database_url, chat={"sign_in_failures": 3, "sign_in_window": 60})
    team = gw.team()
    user, other = make_user(gw, team["id"]), make_user(gw, team["id"])
    anon = httpx.Client(base_url=gw.url, timeout=30)
    for _ in range(3):
        _error(anon.post("/api/chat/session", json={"username": user["name"], "password": "wrong password"}), 401)
    refused = anon.post("/api/chat/session", json={"username": user["name"], "password": PASSWORD})
    assert _error(refused, 429)["code"] == "too_many_sign_ins" and int(refused.headers["retry-after"]) > 0
    sign_in(gw.url, other["name"])  # another user from the same address is not locked out


def test_a_session_ended_elsewhere_ends_here_within_the_session_cache_time(start_gateway, database_url, monkeypatch):
    """Sessions are cached per process for ``chat.session_cache_seconds``: a password set from the CLI (another
    process) ends the user's sessions here within that time; a sign-out ends its own session at once."""
    from typer.testing import CliRunner

    from lmops.cli import app as cli

    gw = start_gateway(database_url=database_url, chat={"session_cache_seconds": 1})
    team = gw.team()
    user = make_user(gw, team["id"])
    browser, leaving = sign_in(gw.url, user["name"]), sign_in(gw.url, user["name"])
    assert leaving.get("/api/chat/conversations").status_code == 200  # cached now
    assert leaving.send("DELETE", "/api/chat/session").status_code == 200
    assert leaving.get("/api/chat/conversations").status_code == 401
    assert browser.get("/api/chat/conversations").status_code == 200
    monkeypatch.setenv("LMOPS_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli, ["users", "set-password", user["name"], "--password-stdin"],
                                input="another password\n")
    assert result.exit_code == 0, result.output
    ended = time.monotonic() + 10  # 1 s of cache, and a slow machine
    while browser.get("/api/chat/conversations").status_code != 401:
        assert time.monotonic() < ended, "the session outlived the cache time"
        time.sleep(0.1)


def test_failed_sign_ins_are_counted_by_every_gateway_process_through_redis(start_gateway, redis_url, tmp_path):
    """With ``redis_url`` set, two gateway processes share the count of failed sign-ins (else each would allow
    ``sign_in_failures``); a gateway whose Redis is down still signs users in and counts failures itself."""
    shared = {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", "redis_url": redis_url,
              "access": {"redis_prefix": f"t{secrets.token_hex(4)}"},
              "chat": {"sign_in_failures": 3, "sign_in_window": 60}}
    one, two = start_gateway(**shared), start_gateway(**shared)
    user = make_user(one, one.team()["id"])
    wrong = {"username": user["name"], "password": "wrong password"}
    for gw in (one, two, one):
        _error(httpx.post(f"{gw.url}/api/chat/session", json=wrong, timeout=30), 401)
    refused = httpx.post(f"{two.url}/api/chat/session", json={"username": user["name"], "password": PASSWORD})
    assert _error(refused, 429)["code"] == "too_many_sign_ins"

    down = start_gateway(**{**shared, "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    other = make_user(one, one.team()["id"])
    assert sign_in(down.url, other["name"]).user["id"] == other["id"]
    for _ in range(3):
        _error(httpx.post(f"{down.url}/api/chat/session", json={**wrong, "username": other["name"]}), 401)
    late = httpx.post(f"{down.url}/api/chat/session", json={"username": other["name"], "password": PASSWORD})
    assert _error(late, 429)["code"] == "too_many_sign_ins"
