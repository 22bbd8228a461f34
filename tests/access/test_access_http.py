"""Every access rule over a real socket with the official openai client, on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import json
from datetime import datetime, timedelta, timezone

import httpx
import openai
import pytest
from typer.testing import CliRunner

from lmops.cli import app as cli
from .helpers import CHAT, clear_of_minute_boundary, ledger_rows


def ask(client: openai.OpenAI, model: str = "fake", max_tokens: int = 10):
    return client.chat.completions.create(model=model, messages=CHAT, max_tokens=max_tokens)


def test_missing_malformed_and_wrong_keys_get_401(gateway):
    team = gateway.team()
    key, _ = gateway.key(team["id"])
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "fake", "messages": CHAT})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    prefix = key.split("-")[1]
    ask(gateway.client(key))  # the guard now remembers this key's header: a wrong secret must still fail
    for bad in ("sk-not-ours", f"lmops-{prefix}-{'x' * 40}", "lmops-zzzzzzzz-" + "y" * 40, key + "x"):
        with pytest.raises(openai.AuthenticationError) as err:
            ask(gateway.client(bad))
        assert err.value.status_code == 401
        assert bad not in err.value.response.text
    assert ask(gateway.client(key)).usage.completion_tokens == 10


def test_revoked_key_is_refused_at_once(gateway):
    key, row = gateway.key(gateway.team()["id"])
    client = gateway.client(key)
    ask(client)
    revoked = gateway.ok("POST", f"/keys/{row['id']}/revoke")
    assert revoked["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError) as err:
        ask(client)
    assert err.value.code == "revoked_api_key"


def test_revocation_elsewhere_takes_effect_within_the_cache_ttl(gateway, database_url, monkeypatch):
    """Revoked by the CLI (as another replica would): refused once the 0.5 s key cache expires."""
    key, row = gateway.key(gateway.team()["id"])
    client = gateway.client(key)
    ask(client)
    monkeypatch.setenv("LMOPS_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli, ["keys", "revoke", row["prefix"]])
    assert result.exit_code == 0, result.output
    revoked_at = datetime.now(timezone.utc)
    with pytest.raises(openai.AuthenticationError):
        while datetime.now(timezone.utc) - revoked_at < timedelta(seconds=5):
            ask(client)
    assert datetime.now(timezone.utc) - revoked_at < timedelta(seconds=1.5)


def test_expired_key_is_refused(gateway):
    soon = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    row = gateway.ok("POST", "/keys", json={"team": gateway.team()["id"], "expires_at": soon})
    client = gateway.client(row["key"])
    ask(client)
    import time

    time.sleep(1.2)
    with pytest.raises(openai.AuthenticationError) as err:
        ask(client)
    assert err.value.code == "expired_api_key"


def test_models_allowed_per_team_and_per_key(gateway):
    team = gateway.team(models=["fake", "oth*"])
    key, row = gateway.key(team["id"])
    client = gateway.client(key)
    ask(client, "fake")
    ask(client, "other")
    gateway.ok("PUT", f"/limits/key/{row['id']}", json={"models": ["fake"]})
    gateway.services.access.cache.invalidate()
    with pytest.raises(openai.PermissionDeniedError) as err:
        ask(client, "other")
    assert err.value.code == "model_not_allowed"
    ask(client, "fake")
    narrow = gateway.team(models=["other"])
    with pytest.raises(openai.PermissionDeniedError):
        ask(gateway.client(gateway.key(narrow["id"])[0]), "fake")


def test_scopes(gateway):
    team = gateway.team()
    batch_only, _ = gateway.key(team["id"], scopes=["batch"])
    with pytest.raises(openai.PermissionDeniedError) as err:
        ask(gateway.client(batch_only))
    assert err.value.code == "insufficient_scope"
    inference, _ = gateway.key(team["id"], scopes=["inference"])
    assert gateway.admin("GET", "/teams", key=inference).status_code == 403


def test_admin_routes_refuse_non_admins_and_hide_other_teams(gateway):
    a, b = gateway.team("team-a"), gateway.team("team-b")
    member = gateway.ok("POST", "/users", json={"name": "m", "team": a["id"]})
    boss = gateway.ok("POST", "/users", json={"name": "boss", "team": a["id"], "role": "team_admin"})
    member_admin_scope, _ = gateway.key(a["id"], user=member["id"], scopes=["inference", "admin"])
    team_admin, _ = gateway.key(a["id"], user=boss["id"], scopes=["inference", "admin"])
    b_key, b_row = gateway.key(b["id"])
    ask(gateway.client(b_key))

    # A member, even holding a key with the admin scope, is no administrator.
    for method, path in [("GET", "/teams"), ("GET", "/keys"), ("GET", "/usage")]:
        assert gateway.admin(method, path, key=member_admin_scope).status_code == 403
    assert gateway.admin("POST", "/teams", key=member_admin_scope, json={"name": "x"}).status_code == 403

    # A team admin sees and manages its own team only; other teams are not found.
    assert [t["id"] for t in gateway.ok("GET", "/teams", key=team_admin)["data"]] == [a["id"]]
    own = gateway.admin("GET", "/keys", key=team_admin).json()["data"]
    assert {k["team_id"] for k in own} == {a["id"]}
    assert all("hash" not in k and "key" not in k for k in own)
    assert gateway.admin("GET", f"/keys?team={b['id']}", key=team_admin).status_code == 404
    assert gateway.admin("GET", f"/usage?team={b['id']}", key=team_admin).status_code == 404
    assert gateway.admin("POST", f"/keys/{b_row['id']}/revoke", key=team_admin).status_code == 404
    assert gateway.admin("GET", f"/limits/key/{b_row['id']}", key=team_admin).status_code == 404
    assert gateway.admin("POST", "/keys", key=team_admin, json={"team": b["id"]}).status_code == 404
    assert gateway.admin("POST", "/teams", key=team_admin, json={"name": "t"}).status_code == 403
    assert gateway.admin("PUT", f"/limits/team/{a['id']}", key=team_admin, json={"rpm": 1}).status_code == 403
    made = gateway.admin("POST", "/keys", key=team_admin, json={"team": a["id"]})
    assert made.status_code == 201
    assert gateway.admin("PUT", f"/limits/key/{made.json()['id']}", key=team_admin,
                         json={"rpm": 5}).json()["rpm"] == 5
    ask(gateway.client(team_admin))
    ledger_rows(gateway.services.settings.database_url, wait_for=2)
    usage = gateway.ok("GET", "/usage?by=team,user", key=team_admin)
    assert [(r["team"], r["team_name"], r["user_name"], r["requests"]) for r in usage["rows"]] == [
        (a["id"], "team-a", "boss", 1)]
    assert usage["totals"]["requests"] == 1
    everyone = gateway.ok("GET", "/usage?by=team")
    assert {(r["team"], r["team_name"]) for r in everyone["rows"]} >= {(a["id"], "team-a"), (b["id"], "team-b")}
    bad = gateway.admin("GET", "/usage?by=team,colour")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "by" and "colour" in bad.json()["error"]["message"]


def test_limits_beyond_what_the_database_holds_are_refused_with_400(gateway):
    team = gateway.team()
    for field, value in (("tpm", 2**31), ("rpm", 10**12), ("max_parallel", -1), ("budget_tokens", 2**63)):
        response = gateway.admin("PUT", f"/limits/team/{team['id']}", json={field: value})
        assert response.status_code == 400, (field, response.text)
        assert response.json()["error"]["param"] == field
    largest = {"rpm": 2**31 - 1, "tpm": 2**31 - 1, "max_parallel": 2**31 - 1, "budget_tokens": 2**63 - 1}
    assert gateway.ok("PUT", f"/limits/team/{team['id']}", json=largest)["tpm"] == 2**31 - 1


def test_requests_per_minute_429_with_headers(headers_gateway):
    gateway = headers_gateway
    clear_of_minute_boundary()
    key, _ = gateway.key(gateway.team(rpm=10)["id"], rpm=3)
    client = gateway.client(key)
    for remaining in (2, 1, 0):
        raw = client.chat.completions.with_raw_response.create(model="fake", messages=CHAT, max_tokens=5)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    with pytest.raises(openai.RateLimitError) as err:
        ask(client)
    headers = err.value.response.headers
    assert err.value.code == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_rate_limit_headers_only_on_refusals_by_default(start_gateway, tmp_path):
    clear_of_minute_boundary()
    gateway = start_gateway(database_url=f"sqlite+aiosqlite:///{tmp_path / 'refusals.db'}")
    key, _ = gateway.key(gateway.team()["id"], rpm=1)
    raw = gateway.client(key).chat.completions.with_raw_response.create(model="fake", messages=CHAT, max_tokens=5)
    assert raw.http_response.status_code == 200 and raw.parse().choices
    assert not [name for name in raw.headers if name.startswith("x-ratelimit-")]
    with pytest.raises(openai.RateLimitError) as err:
        ask(gateway.client(key))
    headers = err.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"


def test_team_limit_is_shared_by_its_keys(gateway):
    clear_of_minute_boundary()
    team = gateway.team(rpm=2)
    k1, _ = gateway.key(team["id"])
    k2, _ = gateway.key(team["id"])
    ask(gateway.client(k1))
    ask(gateway.client(k2))
    with pytest.raises(openai.RateLimitError):
        ask(gateway.client(k1))


def test_tokens_per_minute(headers_gateway):
    gateway = headers_gateway
    clear_of_minute_boundary()
    key, _ = gateway.key(gateway.team()["id"], tpm=30)  # each answer uses 7 + 10 tokens
    client = gateway.client(key)
    raw = client.chat.completions.with_raw_response.create(model="fake", messages=CHAT, max_tokens=10)
    assert raw.headers["x-ratelimit-remaining-tokens"] == "30"
    raw = client.chat.completions.with_raw_response.create(model="fake", messages=CHAT, max_tokens=10)
    assert raw.headers["x-ratelimit-remaining-tokens"] == "13"
    with pytest.raises(openai.RateLimitError) as err:
        ask(client)
    assert err.value.response.headers["x-ratelimit-remaining-tokens"] == "0"


def test_max_parallel_requests(gateway, upstream):
    upstream[1].behaviour.delay = 0.6
    key, _ = gateway.key(gateway.team()["id"], max_parallel=2)
    client = gateway.client(key)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        outcomes = list(pool.map(lambda _: _outcome(client), range(5)))
    assert outcomes.count("ok") == 2
    assert outcomes.count("parallel_limit_exceeded") == 3
    upstream[1].behaviour.delay = 0
    ask(client)  # the slots were released


def _outcome(client: openai.OpenAI) -> str:
    try:
        ask(client)
        return "ok"
    except openai.RateLimitError as exc:
        return str(exc.code)


def test_ledger_has_every_request_with_its_cost(gateway):
    user = gateway.ok("POST", "/users", json={"name": "ann", "team": gateway.team("acct")["id"]})
    key, row = gateway.key(user["team_id"], user=user["id"])
    client = gateway.client(key)
    ask(client)
    client.completions.create(model="other", prompt="hello", max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        ask(client, max_tokens=100_000)
    assert client.embeddings.create(model="fake", input=["a", "b"]).usage.prompt_tokens == 6
    rows = ledger_rows(gateway.services.settings.database_url, wait_for=4)
    rows = [r for r in rows if r["key_id"] == row["id"]]
    assert [(r["model"], r["endpoint"], r["status"]) for r in rows] == [
        ("fake", "chat.completions", 200), ("other", "completions", 200), ("fake", "chat.completions", 400),
        ("fake", "embeddings", 200)]
    assert (rows[3]["prompt_tokens"], rows[3]["completion_tokens"]) == (6, 0)
    assert rows[3]["cost_usd"] == pytest.approx(6 * 0.001)
    first = rows[0]
    assert (first["team_id"], first["user_id"]) == (user["team_id"], user["id"])
    assert (first["prompt_tokens"], first["completion_tokens"]) == (7, 10)
    assert first["cost_usd"] == pytest.approx(7 * 0.001 + 10 * 0.002)  # priced model
    assert rows[1]["cost_usd"] == 0  # "other" has no price
    assert first["latency_ms"] > 0


def test_money_budget_is_never_overspent(gateway):
    """Each answer costs $0.027; reserving the worst case keeps the total under the budget."""
    team = gateway.team()
    key, _ = gateway.key(team["id"], budget_usd=0.2, budget_period="day")
    client = gateway.client(key)
    served = 0
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(20):
            ask(client)
            served += 1
    assert err.value.code == "budget_exceeded"
    assert err.value.response.headers["x-should-retry"] == "false"
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert served >= 3
    spent = sum(r["cost_usd"] for r in ledger_rows(gateway.services.settings.database_url, wait_for=served + 1))
    assert spent == pytest.approx(served * 0.027)
    assert spent <= 0.2


def test_token_budget_of_a_team(gateway):
    team = gateway.team(budget_tokens=300, budget_period="total")
    client = gateway.client(gateway.key(team["id"])[0])
    served = 0
    with pytest.raises(openai.RateLimitError):
        for _ in range(50):
            ask(client)
            served += 1
    assert 1 <= served <= 300 // 17
    rows = ledger_rows(gateway.services.settings.database_url, wait_for=served)
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows if r["team_id"] == team["id"]) <= 300


def test_a_budget_reserves_max_tokens_for_every_choice(gateway):
    """``n`` choices can use ``n * max_tokens``: the reservation must hold that much, not one choice's worth."""
    team = gateway.team()
    key, row = gateway.key(team["id"])

    def send(n: int) -> httpx.Response:
        body = json.dumps({"model": "fake", "messages": CHAT, "max_tokens": 40, "n": n}).encode()
        return httpx.post(f"{gateway.url}/v1/chat/completions", content=body,
                          headers={"authorization": f"Bearer {key}", "content-type": "application/json"})

    size = len(json.dumps({"model": "fake", "messages": CHAT, "max_tokens": 40, "n": 2}).encode())
    gateway.ok("PUT", f"/limits/key/{row['id']}", json={"budget_tokens": size + 2 * 40 + 20, "budget_period": "total"})
    refused = send(3)  # worst case: the prompt's bytes and 3 * 40 tokens, beyond the budget
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    served = send(2)
    assert served.status_code == 200, served.text
    assert len(served.json()["choices"]) == 2
    (ledger,) = [r for r in ledger_rows(gateway.services.settings.database_url, wait_for=2) if r["status"] == 200
                 and r["key_id"] == row["id"]]
    assert ledger["completion_tokens"] == served.json()["usage"]["completion_tokens"] == 2 * 10


def test_scoring_a_prompt_reserves_no_output(gateway):
    """``max_tokens`` 0 with ``echo`` scores the prompt and generates nothing: the reservation is the prompt alone,
    where a request without ``max_tokens`` reserves the model's whole context (512 tokens here)."""
    team = gateway.team()
    key, row = gateway.key(team["id"])
    scoring = {"model": "other", "prompt": "hello", "echo": True, "logprobs": 1, "max_tokens": 0}
    size = len(json.dumps(scoring).encode())
    gateway.ok("PUT", f"/limits/key/{row['id']}", json={"budget_tokens": size + 100, "budget_period": "total"})

    def send(body: dict) -> httpx.Response:
        return httpx.post(f"{gateway.url}/v1/completions", json=body, headers={"authorization": f"Bearer {key}"})

    unbounded = send({k: v for k, v in scoring.items() if k != "max_tokens"})
    assert unbounded.status_code == 429 and unbounded.json()["error"]["code"] == "budget_exceeded", unbounded.text
    scored = send(scoring)
    assert scored.status_code == 200, scored.text


def test_model_list_needs_a_key(gateway):
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401
    key, _ = gateway.key(gateway.team()["id"])
    assert {m.id for m in gateway.client(key).models.list().data} == {"fake", "other"}


def test_team_admin_cannot_mint_keys_of_administrators(gateway):
    """The bootstrap admin user lives in the default team; its team admin must not borrow its role."""
    boss = gateway.ok("POST", "/users", json={"name": "deputy", "team": "default", "role": "team_admin"})
    deputy, _ = gateway.key("default", user=boss["id"], scopes=["admin"])
    (admin_user,) = [u for u in gateway.ok("GET", "/users")["data"] if u["role"] == "admin"]
    made = gateway.admin("POST", "/keys", key=deputy, json={"team": "default", "user": admin_user["id"],
                                                            "scopes": ["admin"]})
    assert made.status_code == 403
    assert gateway.admin("POST", "/users", key=deputy, json={"name": "x", "team": "default",
                                                             "role": "admin"}).status_code == 403


def test_limits_fail_closed_when_redis_is_down(start_gateway):
    from lmops.testing.server import free_port

    gateway = start_gateway(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    limited, _ = gateway.key(gateway.team()["id"], rpm=100)
    with pytest.raises(openai.InternalServerError) as err:
        ask(gateway.client(limited))
    assert err.value.status_code == 503 and err.value.code == "limits_unavailable"
    unlimited, _ = gateway.key(gateway.team()["id"])
    assert ask(gateway.client(unlimited)).usage.completion_tokens == 10  # nothing to count: no Redis needed


@pytest.mark.parametrize("endpoint", ["chat", "embeddings"])
def test_an_unforeseen_failure_still_releases_the_slot_and_leaves_a_record(gateway, monkeypatch, endpoint):
    """A bug after admission (injected here) is a 500 envelope; the parallel slot is given back and the request
    is in the ledger, instead of the slot staying held until its counter expires."""
    key, _ = gateway.key(gateway.team()["id"], max_parallel=1)
    client = gateway.client(key)
    router = gateway.services.core.router
    real = router.resolve

    def broken(model):
        monkeypatch.setattr(router, "resolve", real)  # once
        raise RuntimeError("injected bug")

    monkeypatch.setattr(router, "resolve", broken)
    with pytest.raises(openai.InternalServerError) as err:
        if endpoint == "chat":
            ask(client)
        else:
            client.embeddings.create(model="fake", input="a")
    assert err.value.code == "internal_error" and "injected" not in err.value.message  # no internals leak
    ask(client)  # the only parallel slot is free again
    rows = ledger_rows(gateway.services.settings.database_url, wait_for=2)
    assert [r["status"] for r in rows[-2:]] == [500, 200]
