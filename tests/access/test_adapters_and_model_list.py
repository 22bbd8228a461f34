"""Model rules over "<model>:<adapter>" names, the ledger's adapter column, and /v1/models filtered per key."""

from __future__ import annotations

import io
import json
import time

import httpx
import openai
import pytest

from .helpers import CHAT, ledger_rows


def models(upstream_url: str) -> list[dict]:
    adapters = [{"name": "good-1", "upstream_model": "good-1-up"}, {"name": "good-2"}, {"name": "bad"}]
    return [{"name": "fake", "engine": "openai", "replicas": [upstream_url], "context_length": 512,
             "adapters": adapters},
            {"name": "other", "engine": "openai", "replicas": [upstream_url], "context_length": 512}]


EVERYTHING = {"fake", "fake:good-1", "fake:good-2", "fake:bad", "other"}


@pytest.fixture
def adapter_gateway(start_gateway, upstream, tmp_path):
    def start(database_url: str | None = None, **overrides):
        url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'adapters.db'}"
        return start_gateway(database_url=url, models=models(f"{upstream[0].url}/v1"), **overrides)

    return start


def test_adapter_rules_and_the_ledger_adapter_column(adapter_gateway, database_url, upstream):
    gw = adapter_gateway(database_url)
    team = gw.team(models=["fake", "fake:good-*"])
    client = gw.client(gw.key(team["id"])[0])
    resp = client.chat.completions.create(model="fake:good-1", messages=CHAT, max_tokens=5)
    assert resp.model == "fake:good-1"
    assert upstream[1].models_seen == {"good-1-up": 1}
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(model="fake:bad", messages=CHAT, max_tokens=5)
    assert err.value.code == "model_not_allowed" and "'fake:bad'" in err.value.message
    with pytest.raises(openai.NotFoundError) as missing:  # allowed by the pattern, but no such adapter
        client.chat.completions.create(model="fake:good-9", messages=CHAT, max_tokens=5)
    assert missing.value.code == "model_not_found"
    assert upstream[1].models_seen == {"good-1-up": 1}  # refused requests never went upstream
    rows = [r for r in ledger_rows(gw.services.settings.database_url, wait_for=3) if r["team_id"] == team["id"]]
    assert sorted((r["model"], r["adapter"], r["status"]) for r in rows) == [
        ("fake", "bad", 403), ("fake", "good-1", 200), ("fake:good-9", None, 404)]
    served = next(r for r in rows if r["status"] == 200)
    assert served["cost_usd"] == pytest.approx(7 * 0.001 + 5 * 0.002)  # priced as its model (cut at max_tokens 5)


def ids(client: openai.OpenAI) -> set[str]:
    return {m.id for m in client.models.list().data}


def test_model_list_shows_only_what_team_and_key_allow(adapter_gateway):
    gw = adapter_gateway()
    team = gw.team(models=["fake", "fake:good-*", "other"])
    team_key, _ = gw.key(team["id"])
    narrow_key, _ = gw.key(team["id"], models=["fake*"])  # the key's own rules narrow the team's
    assert ids(gw.client(gw.admin_key)) == EVERYTHING  # no rules on the admin's team
    assert ids(gw.client(team_key)) == {"fake", "fake:good-1", "fake:good-2", "other"}
    assert ids(gw.client(narrow_key)) == {"fake", "fake:good-1", "fake:good-2"}

    # What the list shows is exactly what the key may call.
    narrow = gw.client(narrow_key)
    for name in sorted(EVERYTHING):
        try:
            narrow.chat.completions.create(model=name, messages=CHAT, max_tokens=5)
            callable_ = True
        except openai.PermissionDeniedError:
            callable_ = False
        assert callable_ == (name in {"fake", "fake:good-1", "fake:good-2"}), name

    # A hidden model's card is a 404 that reads exactly like a model that does not exist.
    auth = {"authorization": f"Bearer {narrow_key}"}
    hidden = httpx.get(f"{gw.url}/v1/models/other", headers=auth)
    absent = httpx.get(f"{gw.url}/v1/models/no-such-model", headers=auth)
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json()["error"]["code"] == "model_not_found"
    assert hidden.json()["error"]["message"] == absent.json()["error"]["message"].replace("no-such-model", "other")
    with pytest.raises(openai.NotFoundError):
        gw.client(team_key).models.retrieve("fake:bad")
    card = narrow.models.retrieve("fake:good-1").model_dump()
    assert (card["id"], card["parent"], card["root"]) == ("fake:good-1", "fake", "good-1-up")
    assert gw.client(gw.admin_key).models.retrieve("other").id == "other"
    assert httpx.get(f"{gw.url}/v1/models/fake").status_code == 401  # a key first, as ever


def test_model_list_follows_a_changed_rule(adapter_gateway):
    gw = adapter_gateway()
    team = gw.team()
    key, row = gw.key(team["id"])
    client = gw.client(key)
    assert ids(client) == EVERYTHING
    gw.ok("PUT", f"/limits/key/{row['id']}", json={"models": ["other"]})
    gw.services.access.cache.invalidate()
    assert ids(client) == {"other"}


def test_batch_calls_meet_the_adapter_rules_of_their_team(adapter_gateway, upstream, tmp_path):
    gw = adapter_gateway(batch={"data_dir": str(tmp_path / "data"), "poll_seconds": 0.05, "ack_interval": 0.02,
                                "heartbeat_seconds": 0.5, "lease_seconds": 5, "max_attempts": 1})
    team = gw.team(models=["fake", "fake:good-*"])
    client = gw.client(gw.key(team["id"], scopes=["inference", "batch"])[0])
    lines = [{"custom_id": name, "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": name, "messages": CHAT, "max_tokens": 5}} for name in ("fake:good-1", "fake:bad")]
    f = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(json.dumps(x) for x in lines).encode())),
                            purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)
    assert batch.status == "completed" and batch.request_counts.completed == 1 and batch.request_counts.failed == 1
    (out,) = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert out["custom_id"] == "fake:good-1" and out["response"]["body"]["model"] == "fake:good-1"
    (error,) = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert error["custom_id"] == "fake:bad"
    assert error["response"]["body"]["error"]["code"] == "model_not_allowed"
    assert upstream[1].models_seen == {"good-1-up": 1}
    rows = [r for r in ledger_rows(gw.services.settings.database_url, wait_for=2) if r["team_id"] == team["id"]]
    assert sorted((r["model"], r["adapter"], r["status"]) for r in rows) == [("fake", "bad", 403),
                                                                             ("fake", "good-1", 200)]
