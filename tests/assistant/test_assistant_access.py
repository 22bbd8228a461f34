"""The assistant under access control: a key sees and uses it when it may use both its models; every inner call
is recorded and billed to the key like a /v1 call."""

from __future__ import annotations

import sqlite3
import time

import openai
import pytest

from access.conftest import start_gateway, upstream  # noqa: F401
from lmops.testing.scripted_openai import Answer, ScriptedChat

MATH = '{"operation": "evaluate", "expression": "2**10"}'
PRICES = {"fn": {"input": 1000.0, "output": 2000.0}, "writer": {"input": 1000.0, "output": 2000.0}}


def test_keys_use_the_assistant_when_they_may_use_both_models(start_gateway, serve, tmp_path):  # noqa: F811
    fn, writer = ScriptedChat([Answer(call="math", arguments=[MATH])]), ScriptedChat([Answer(text=["It is 1024."])])
    fn_srv, writer_srv = serve(fn), serve(writer)
    db = tmp_path / "assistant.db"
    gw = start_gateway(database_url=f"sqlite+aiosqlite:///{db}", access={"prices": PRICES},
                       models=[{"name": "fn", "engine": "openai", "replicas": [f"{fn_srv.url}/v1"]},
                               {"name": "writer", "engine": "openai", "replicas": [f"{writer_srv.url}/v1"]}],
                       assistant={"function_model": "fn", "default_model": "writer",
                                  "tools": {"entry_points": False, "weather": {"enabled": False},
                                            "wikipedia": {"enabled": False}}})
    team = gw.team()
    half, half_row = gw.key(team["id"], models=["writer"])
    both, both_row = gw.key(team["id"], models=["fn", "writer"])

    assert [m.id for m in gw.client(half).models.list()] == ["writer"]
    with pytest.raises(openai.NotFoundError):
        gw.client(half).models.retrieve("assistant")
    with pytest.raises(openai.PermissionDeniedError) as info:
        gw.client(half).chat.completions.create(model="assistant", messages=[{"role": "user", "content": "2**10?"}])
    assert info.value.body["code"] == "model_not_allowed" and fn.bodies == []

    client = gw.client(both)
    assert [m.id for m in client.models.list()] == ["fn", "writer", "assistant"]
    resp = client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "2**10?"}],
                                          extra_headers={"x-request-id": "assistant-turn-1"})
    assert resp.choices[0].message.content == "It is 1024.\n\n\u2014 Source: SymPy"
    rows: list[tuple] = []
    deadline = time.monotonic() + 10
    while len(rows) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT endpoint, model, key_id, status, prompt_tokens, completion_tokens, cost_usd "
                                "FROM request_records WHERE request_id = 'assistant-turn-1' ORDER BY id").fetchall()
    assert [r[:6] for r in rows] == [("assistant.function", "fn", both_row["id"], 200, 11, 5),
                                     ("assistant.answer", "writer", both_row["id"], 200, 11, 5)]
    assert all(r[6] == pytest.approx(11 * 0.001 + 5 * 0.002) for r in rows)  # billed at each model's price
