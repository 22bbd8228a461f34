"""Single sign-on to the web chat (OpenID Connect, authorization code with PKCE) against the fake provider: the
whole flow through a running gateway, user mapping by (issuer, subject) and team claim, and every refusal."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from lmops.chat.sso_state import StateError, StateSigner
from lmops.config import SsoConfig
from lmops.testing.fake_oidc import FakeOidc
from lmops.testing.server import ServerThread, free_port

from .conftest import Browser, make_user, sign_in
from .test_web_ui import FULL, Page, chromium  # noqa: F401 (chromium: the browser fixture)

SECRET_ENV = "LMOPS_TEST_SSO_SECRET"


@pytest.fixture
def oidc(serve) -> tuple[ServerThread, FakeOidc]:
    fake = FakeOidc()
    return serve(fake.app()), fake


@pytest.fixture
def sso_gateway(start_gateway, oidc, monkeypatch, tmp_path):
    """``start(database_url=None, **sso)``: a gateway whose chat signs in through the fake provider."""
    srv, fake = oidc
    monkeypatch.setenv(SECRET_ENV, fake.client_secret or "")

    def start(database_url: str | None = None, **sso: Any):
        config = {"issuer": srv.url, "client_id": fake.client_id, "client_secret_env": SECRET_ENV,
                  "button_label": "Example University", **sso}
        return start_gateway(database_url=database_url or f"sqlite+aiosqlite:///{tmp_path / 'sso.db'}",
                             chat={"sso": config})

    return start


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def start_login(http: httpx.Client) -> str:
    """Ask lmops to sign in; the provider's authorization URL it redirects to."""
    login = http.get("/api/chat/sso/login")
    assert login.status_code == 302, login.text
    cookie = login.headers["set-cookie"].lower()
    assert "lmops_sso=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    return login.headers["location"]


def at_provider(authorize_url: str) -> str:
    """The fake approves at once: the callback URL it sends the browser back to."""
    resp = httpx.get(authorize_url, timeout=30)
    assert resp.status_code == 302, resp.text
    return resp.headers["location"]


def sso_flow(url: str) -> tuple[httpx.Client, httpx.Response]:
    """A browser's whole sign-in: its client and lmops's answer to the callback."""
    http = httpx.Client(base_url=url, timeout=30)
    back = http.get(at_provider(start_login(http)))
    assert back.status_code == 302, back.text
    return http, back


def signed_in(url: str) -> Browser:
    http, back = sso_flow(url)
    assert back.headers["location"] == "/"
    session = http.get("/api/chat/session")
    assert session.status_code == 200, session.text
    body = session.json()
    return Browser(http, body["csrf_token"], body["user"])


def refused(url: str, code: str) -> httpx.Client:
    """A sign-in that ends on the chat page with ``code`` explained, and without a session."""
    http, back = sso_flow(url)
    assert back.headers["location"] == f"/?sso_error={code}"
    assert "lmops_session" not in back.headers.get("set-cookie", "")
    assert http.get("/api/chat/session").status_code == 401
    explained = http.get(f"/api/chat/sso?error={code}").json()["error"]
    assert explained["code"] == code and explained["message"]
    return http


def test_first_sign_in_creates_the_user_in_the_claimed_team_and_later_ones_follow_the_claim(
        sso_gateway, oidc, database_url):
    _, fake = oidc
    gw = sso_gateway(database_url)
    research, physics = gw.team("research"), gw.team("physics")
    info = httpx.get(f"{gw.url}/api/chat/sso").json()
    assert info == {"object": "chat.sso", "enabled": True, "label": "Example University",
                    "login_url": "/api/chat/sso/login"}
    fake.claims["groups"] = ["staff", "research"]  # the first that names a team wins

    browser = signed_in(gw.url)
    assert browser.user["name"] == "jane" and browser.user["team_id"] == research["id"]
    made = browser.ok("POST", "/api/chat/conversations", json={"title": "via sso"})
    assert [c["id"] for c in browser.get("/api/chat/conversations").json()["data"]] == [made["id"]]
    [user] = [u for u in gw.ok("GET", "/users")["data"] if u["name"] == "jane"]
    assert user["id"] == browser.user["id"] and user["team_id"] == research["id"] and user["role"] == "member"

    # what lmops sent: a code flow with an S256 challenge of the verifier it later sent, a nonce, the scopes
    [asked] = fake.authorizations
    assert asked["response_type"] == "code" and asked["code_challenge_method"] == "S256"
    assert set(asked["scope"].split()) >= {"openid", "profile", "email"} and asked["nonce"]
    assert asked["redirect_uri"] == f"{gw.url}/api/chat/sso/callback"
    [form] = fake.token_requests
    digest = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).rstrip(b"=")
    assert digest.decode() == asked["code_challenge"] and 43 <= len(form["code_verifier"]) <= 128
    assert "client_secret" not in form  # client_secret_basic: the secret went in the header

    fake.claims["groups"] = ["physics"]
    again = signed_in(gw.url)
    assert again.user["id"] == browser.user["id"] and again.user["team_id"] == physics["id"]
    assert [c["id"] for c in again.get("/api/chat/conversations").json()["data"]] == [made["id"]]
    assert browser.get("/api/chat/session").json()["user"]["team_id"] == physics["id"]  # the first session too
    assert [u["name"] for u in gw.ok("GET", "/users")["data"]].count("jane") == 1


@pytest.mark.parametrize("auth", ["client_secret_post", "public"])
def test_the_client_authenticates_as_configured(sso_gateway, oidc, auth):
    _, fake = oidc
    if auth == "public":
        fake.client_secret = None
        gw = sso_gateway(client_secret_env=None)
    else:
        gw = sso_gateway(token_auth=auth)
    gw.team("research")
    assert signed_in(gw.url).user["name"] == "jane"
    [form] = fake.token_requests
    assert form["client_id"] == fake.client_id and form.get("client_secret") == fake.client_secret


def test_a_local_user_with_the_same_name_is_not_taken_over(sso_gateway):
    gw = sso_gateway()
    team = gw.team("research")
    local = make_user(gw, team["id"], name="jane")
    mine = sign_in(gw.url, "jane")
    mine.ok("POST", "/api/chat/conversations", json={"title": "private"})

    sso = signed_in(gw.url)
    assert sso.user["id"] != local["id"] and sso.user["name"] == "jane-2"
    assert sso.get("/api/chat/conversations").json()["data"] == []
    assert sign_in(gw.url, "jane").user["id"] == local["id"]  # the password still signs in the local user


def test_a_team_map_and_the_default_team(sso_gateway, oidc):
    _, fake = oidc
    gw = sso_gateway(team_claim="team", team_map={"uni-research": "research"})
    research = gw.team("research")
    fake.claims.update(team="uni-research", sub="s-1")
    assert signed_in(gw.url).user["team_id"] == research["id"]
    fake.claims.update(team="research", sub="s-2", preferred_username="joe")  # not in the map: no team
    http = refused(gw.url, "no_team")
    assert "team" in http.get("/api/chat/sso?error=no_team").json()["error"]["message"]
    assert "joe" not in [u["name"] for u in gw.ok("GET", "/users")["data"]]


def test_a_user_without_a_team_claim_lands_in_the_default_team(sso_gateway, oidc):
    _, fake = oidc
    gw = sso_gateway(default_team="guests")
    guests = gw.team("guests")
    del fake.claims["groups"]
    del fake.claims["preferred_username"]
    browser = signed_in(gw.url)
    assert browser.user["team_id"] == guests["id"] and browser.user["name"] == "jane@example.org"


def test_pkce_stops_a_code_stolen_for_another_browser(sso_gateway, oidc):
    _, fake = oidc
    gw = sso_gateway()
    gw.team("research")
    victim = httpx.Client(base_url=gw.url, timeout=30)
    stolen = query(at_provider(start_login(victim)))["code"]
    attacker = httpx.Client(base_url=gw.url, timeout=30)
    own_state = query(start_login(attacker))["state"]
    back = attacker.get(f"/api/chat/sso/callback?code={stolen}&state={own_state}")
    assert back.headers["location"] == "/?sso_error=token_refused"
    assert fake.token_requests[-1]["code"] == stolen
    direct = httpx.post(f"{oidc[0].url}/token", data={"grant_type": "authorization_code", "code": "x"})
    assert direct.status_code == 401  # the fake wants the client's secret


def test_a_forged_missing_or_tampered_state_is_refused(sso_gateway, oidc):
    _, fake = oidc
    gw = sso_gateway()
    gw.team("research")
    http = httpx.Client(base_url=gw.url, timeout=30)
    callback = at_provider(start_login(http))
    code = query(callback)["code"]
    for params in (f"code={code}", f"code={code}&state=forged"):
        assert http.get(f"/api/chat/sso/callback?{params}").headers["location"] == "/?sso_error=invalid_state"
    other_browser = httpx.get(callback, timeout=30)  # without the cookie
    assert other_browser.headers["location"] == "/?sso_error=invalid_state"
    sealed = http.cookies["lmops_sso"]
    payload, mac = sealed.rsplit(".", 1)
    tampered = ("A" if payload[0] != "A" else "B") + payload[1:] + "." + mac
    resp = httpx.get(callback, cookies={"lmops_sso": tampered}, timeout=30)
    assert resp.headers["location"] == "/?sso_error=invalid_state"
    assert fake.token_requests == []  # nothing reached the provider
    assert http.get(callback).headers["location"] == "/"  # the real browser still signs in
    assert "lmops_sso" not in http.cookies  # used up: replaying the answer is refused
    assert http.get(callback).headers["location"] == "/?sso_error=invalid_state"


def test_the_providers_keys_are_fetched_again_for_an_unknown_key_id(sso_gateway, oidc):
    _, fake = oidc
    gw = sso_gateway(jwks_refresh_seconds=0)
    gw.team("research")
    signed_in(gw.url)
    signed_in(gw.url)
    assert fake.jwks_requests == 1  # cached
    fake.rotate()
    signed_in(gw.url)
    assert fake.jwks_requests == 2


def test_the_providers_keys_are_fetched_at_most_once_per_refresh_period(sso_gateway, oidc):
    _, fake = oidc
    gw = sso_gateway(jwks_refresh_seconds=3600)
    gw.team("research")
    signed_in(gw.url)
    fake.rotate()
    refused(gw.url, "invalid_token")
    refused(gw.url, "invalid_token")
    assert fake.jwks_requests == 1


def test_an_es256_provider_works(sso_gateway, oidc):
    _, fake = oidc
    fake.algorithm = "ES256"
    gw = sso_gateway()
    gw.team("research")
    assert signed_in(gw.url).user["name"] == "jane"


@pytest.mark.parametrize("switch", ["other_key", "hs256", "expired", "wrong_nonce", "wrong_audience"])
def test_a_token_that_does_not_verify_is_refused(sso_gateway, oidc, switch):
    _, fake = oidc
    gw = sso_gateway()
    gw.team("research")
    setattr(fake, switch, True)
    refused(gw.url, "invalid_token")
    assert "jane" not in [u["name"] for u in gw.ok("GET", "/users")["data"]]


def test_provider_refusals_are_explained(sso_gateway, oidc):
    _, fake = oidc
    gw = sso_gateway()
    gw.team("research")
    fake.token_error = "invalid_grant"
    refused(gw.url, "token_refused")
    fake.token_error, fake.deny = None, True
    refused(gw.url, "provider_error")


def test_a_provider_that_is_down_is_a_clear_error(sso_gateway, oidc, start_gateway, monkeypatch, tmp_path):
    srv, _ = oidc
    gw = sso_gateway()
    gw.team("research")
    http = httpx.Client(base_url=gw.url, timeout=30)
    callback = at_provider(start_login(http))
    srv.stop()  # between the provider's answer and the code exchange
    back = http.get(callback)
    assert back.status_code == 302 and back.headers["location"] == "/?sso_error=provider_unreachable"

    down = start_gateway(database_url=f"sqlite+aiosqlite:///{tmp_path / 'down.db'}",
                         chat={"sso": {"issuer": f"http://127.0.0.1:{free_port()}", "client_id": "lmops"}})
    login = httpx.get(f"{down.url}/api/chat/sso/login", timeout=30)
    assert login.status_code == 302 and login.headers["location"] == "/?sso_error=provider_unreachable"


def test_without_access_control_single_sign_on_is_not_offered(serve, settings_factory, oidc):
    from lmops.app import create_app

    srv, fake = oidc
    app = create_app(settings_factory([], chat={"sso": {"issuer": srv.url, "client_id": fake.client_id}}))
    url = serve(app).url
    assert httpx.get(f"{url}/api/chat/sso").json()["enabled"] is False
    assert httpx.get(f"{url}/api/chat/sso/login").status_code == 404


def test_the_state_cookie_expires_and_the_config_wants_its_secret(monkeypatch):
    now = [1_000_000.0]
    signer = StateSigner(b"s" * 32, 60, clock=lambda: now[0])
    pending = signer.new("http://lmops/api/chat/sso/callback")
    sealed = signer.seal(pending)
    assert signer.open(sealed, pending.state) == pending
    now[0] += 61
    with pytest.raises(StateError) as caught:
        signer.open(sealed, pending.state)
    assert caught.value.code == "expired"
    monkeypatch.delenv("LMOPS_NO_SUCH_SECRET", raising=False)
    with pytest.raises(ValueError, match="LMOPS_NO_SUCH_SECRET"):
        SsoConfig(issuer="https://id.example.org", client_id="x", client_secret_env="LMOPS_NO_SUCH_SECRET")
    with pytest.raises(ValueError, match="both issuer and client_id"):
        SsoConfig(issuer="https://id.example.org")
    assert not SsoConfig().enabled


def test_the_sign_in_form_offers_single_sign_on_in_a_browser(chromium, sso_gateway, oidc, tmp_path):  # noqa: F811
    _, fake = oidc
    gw = sso_gateway()
    gw.team("research")
    ui = Page(chromium, gw.url, tmp_path)
    p = ui.page
    p.goto(gw.url + "/")
    p.wait_for_selector("#sso:has-text('Sign in with Example University')")
    p.click("#sso")
    p.wait_for_selector("body[data-ready]")
    assert p.locator("#who").text_content() == "Signed in as jane"
    ui.new_chat()
    ui.send("Hello")
    assert ui.wait_answer(1).locator(".body").text_content().strip() == FULL
    p.click("#sign-out")
    p.wait_for_selector("#signin-form", state="visible")

    fake.deny = True
    p.click("#sso")
    p.wait_for_selector("#signin-error:has-text('did not sign you in')")
    assert p.url == gw.url + "/" and p.locator("#app").is_hidden()  # the code left the address bar
    ui.shot("sso.png")
    ui.close()
