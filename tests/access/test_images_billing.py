"""Image generation under access control: a key is needed to generate (not to fetch a signed URL), the request
is billed per image in the ledger, and a team's budget refuses images it cannot pay for."""

from __future__ import annotations

import httpx
import openai
import pytest

from lmops.images.signing import signing_key
from lmops.testing.fake_images import FakeImages

from .helpers import ledger_rows


SECRET = "an-image-test-secret-0123456789"


@pytest.fixture
def image_gateway(start_gateway, serve, upstream, tmp_path, monkeypatch):
    monkeypatch.setenv("LMOPS_SECRET", SECRET)
    images = serve(FakeImages())
    srv_up, _ = upstream
    url = f"sqlite+aiosqlite:///{tmp_path / 'access.db'}"
    gw = start_gateway(database_url=url, images={"data_dir": str(tmp_path / "data")},
                       access={"prices": {"painter": {"image": 0.04}, "fake": {"input": 1.0, "output": 2.0}}},
                       models=[{"name": "painter", "engine": "openai", "kind": "image",
                                "replicas": [f"{images.url}/v1"]},
                               {"name": "fake", "engine": "openai", "replicas": [f"{srv_up.url}/v1"]}])
    return gw, url


def test_images_are_billed_per_image_and_their_urls_need_no_key(image_gateway):
    gw, url = image_gateway
    team = gw.team()
    key, row = gw.key(team["id"])
    with pytest.raises(openai.AuthenticationError):
        gw.client("lmops-nokey000-xxxxxxxxxxxxxxxxxxxxxxxx").images.generate(model="painter", prompt="x")
    got = gw.client(key).images.generate(model="painter", prompt="two", n=2)
    assert gw.services.images.signer._key == signing_key(SECRET.encode())  # noqa: SLF001 - access's secret
    assert all(httpx.get(d.url or "").status_code == 200 for d in got.data)  # no key sent
    rows = ledger_rows(url, wait_for=1)
    images = [r for r in rows if r["endpoint"] == "images.generations"]
    assert len(images) == 1
    record = images[0]
    assert record["model"] == "painter" and record["status"] == 200 and record["team_id"] == team["id"]
    assert record["key_id"] == row["id"] and record["cost_usd"] == pytest.approx(0.08)
    assert record["prompt_tokens"] == 0 and record["completion_tokens"] == 0


def test_a_team_budget_refuses_images_it_cannot_pay_for(image_gateway):
    gw, url = image_gateway
    team = gw.team(budget_usd=0.1, budget_period="day")
    key, _ = gw.key(team["id"])
    client = gw.client(key)
    client.images.generate(model="painter", prompt="x", n=2)  # $0.08
    with pytest.raises(openai.RateLimitError) as caught:
        client.images.generate(model="painter", prompt="x", n=1)  # $0.04 more would pass $0.10
    assert caught.value.response.json()["error"]["code"] == "budget_exceeded"
    rows = [r for r in ledger_rows(url, wait_for=2) if r["endpoint"] == "images.generations"]
    assert [r["cost_usd"] for r in rows] == [pytest.approx(0.08), 0.0]
    assert rows[1]["status"] == 429


def test_a_key_not_allowed_the_image_model_is_refused(image_gateway):
    gw, _ = image_gateway
    team = gw.team(models=["fake"])
    key, _ = gw.key(team["id"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gw.client(key).images.generate(model="painter", prompt="x")
    assert caught.value.response.json()["error"]["code"] == "model_not_allowed"
