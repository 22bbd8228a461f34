"""Conversations and messages through the chat API: ownership, paging, search, models, streamed answers that are
billed to the user's team, stop (by the API and by leaving), regenerate and edit-and-resend."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import orjson
import pytest

from lmops.chat.store import ChatStore, NewMessage
from lmops.store.database import create_engine
from lmops.testing.fake_openai import FakeOpenAI, receive_body

from access.helpers import clear_of_minute_boundary, ledger_rows

from .conftest import make_user, sign_in, sse


@pytest.fixture
def pair(chat_gateway):
    gw = chat_gateway
    team = gw.team()
    alice, bob = make_user(gw, team["id"]), make_user(gw, team["id"])
    return gw, team, sign_in(gw.url, alice["name"]), sign_in(gw.url, bob["name"])


def test_another_users_conversation_is_not_found(pair):
    gw, _, alice, bob = pair
    conv = alice.ok("POST", "/api/chat/conversations", json={"title": "secret"})
    path = f"/api/chat/conversations/{conv['id']}"
    for resp in (bob.get(path), bob.get(f"{path}/messages"), bob.send("PATCH", path, json={"title": "x"}),
                 bob.send("DELETE", path), bob.send("POST", f"{path}/messages", json={"content": "hi"}),
                 bob.send("POST", f"{path}/stop"), bob.send("POST", f"{path}/regenerate")):
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["code"] == "not_found"
    assert bob.get("/api/chat/conversations").json()["data"] == []
    assert alice.get(path).json()["title"] == "secret"


def test_conversations_are_listed_newest_first_by_cursor_searched_edited_and_deleted(pair):
    _, _, alice, _ = pair
    made = [alice.ok("POST", "/api/chat/conversations", json={"title": f"talk {i}"}) for i in range(5)]
    alice.ask(made[1]["id"], "tell me about zebras")  # a message moves its conversation to the top
    first = alice.get("/api/chat/conversations", params={"limit": 2}).json()
    assert [c["id"] for c in first["data"]] == [made[1]["id"], made[4]["id"]] and first["has_more"]
    rest = alice.get("/api/chat/conversations", params={"limit": 10, "cursor": first["next_cursor"]}).json()
    assert [c["id"] for c in rest["data"]] == [made[3]["id"], made[2]["id"], made[0]["id"]]
    assert not rest["has_more"] and rest["next_cursor"] is None
    assert alice.get("/api/chat/conversations", params={"cursor": "garbage!"}).status_code == 400
    found = alice.get("/api/chat/conversations", params={"q": "ZEBRA"}).json()["data"]
    assert [c["id"] for c in found] == [made[1]["id"]]  # message text
    assert [c["id"] for c in alice.get("/api/chat/conversations", params={"q": "talk 3"}).json()["data"]] == \
        [made[3]["id"]]  # title
    assert alice.get("/api/chat/conversations", params={"q": "100%"}).json()["data"] == []  # % is literal

    path = f"/api/chat/conversations/{made[0]['id']}"
    patched = alice.ok("PATCH", path, json={"title": "renamed", "system_prompt": "Be brief.", "model": "other",
                                            "params": {"temperature": 0.2, "repetition_penalty": 1.1}})
    assert (patched["title"], patched["system_prompt"], patched["model"]) == ("renamed", "Be brief.", "other")
    assert patched["params"] == {"temperature": 0.2, "repetition_penalty": 1.1}
    assert alice.ok("PATCH", path, json={"system_prompt": None})["title"] == "renamed"  # the rest stays
    bad = alice.send("PATCH", path, json={"params": {"temperature": 9}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "params.temperature"
    assert alice.send("PATCH", path, json={"model": "nope"}).status_code == 404
    assert alice.send("DELETE", path).status_code == 200
    assert alice.get(path).status_code == 404


def test_models_are_those_the_team_may_use(chat_gateway):
    gw = chat_gateway
    team = gw.team(models=["fake"])
    browser = sign_in(gw.url, make_user(gw, team["id"])["name"])
    assert [m["id"] for m in browser.get("/api/chat/models").json()["data"]] == ["fake"]
    conv = browser.ok("POST", "/api/chat/conversations", json={})
    refused = browser.send("POST", f"/api/chat/conversations/{conv['id']}/messages",
                           json={"content": "hi", "model": "other"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert browser.send("POST", "/api/chat/conversations", json={"model": "other"}).status_code == 404


def test_an_answer_streams_is_stored_and_billed_to_the_users_team(pair, database_url, upstream):
    gw, team, alice, _ = pair
    _, fake = upstream
    conv = alice.ok("POST", "/api/chat/conversations",
                    json={"system_prompt": "You are terse.", "params": {"temperature": 0.5, "repetition_penalty": 1.2,
                                                                        "max_tokens": 50}})
    chunks, final = alice.ask(conv["id"], "hello there")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "fake" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "The quick brown fox jumps over the lazy dog."
    user_msg, answer = final["messages"]
    assert (user_msg["role"], user_msg["content"], user_msg["seq"]) == ("user", "hello there", 1)
    assert (answer["role"], answer["content"], answer["status"], answer["seq"]) == ("assistant", text, "complete", 2)
    assert (answer["prompt_tokens"], answer["completion_tokens"]) == (7, 10)  # the upstream's usage chunk
    assert answer["params"] == {"temperature": 0.5, "repetition_penalty": 1.2, "max_tokens": 50}
    assert alice.get(f"/api/chat/conversations/{conv['id']}").json()["title"] == "hello there"
    page = alice.get(f"/api/chat/conversations/{conv['id']}/messages").json()
    assert [m["id"] for m in page["data"]] == [user_msg["id"], answer["id"]]

    rows = ledger_rows(database_url, wait_for=1)
    chat_rows = [r for r in rows if r["endpoint"] == "chat.messages"]
    assert len(chat_rows) == 1
    row = chat_rows[0]
    assert (row["team_id"], row["user_id"], row["key_id"]) == (team["id"], alice.user["id"], None)
    assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (7, 10, 200)
    assert row["cost_usd"] == pytest.approx(7 * 0.001 + 10 * 0.002)

    _, again = alice.ask(conv["id"], "and again")  # the history goes with the next question
    assert [m["seq"] for m in again["messages"]] == [3, 4]
    assert fake.requests == 2


class RecordingFake(FakeOpenAI):
    """The fake upstream, keeping the body of every completion request it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict] = []

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            return await super().__call__(scope, receive, send)
        body = await receive_body(receive)
        self.bodies.append(orjson.loads(body))
        sent = False

        async def replay():  # type: ignore[no-untyped-def]
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await super().__call__(scope, replay, send)


def test_the_model_gets_the_system_prompt_and_the_latest_turns_that_fit(start_gateway, database_url, serve):
    fake = RecordingFake()
    up = serve(fake)
    gw = start_gateway(database_url=database_url,
                       models=[{"name": "fake", "engine": "openai", "replicas": [f"{up.url}/v1"],
                                "context_length": 512}])
    browser = sign_in(gw.url, make_user(gw, gw.team()["id"])["name"])
    conv = browser.ok("POST", "/api/chat/conversations",
                      json={"system_prompt": "Be brief.", "params": {"max_tokens": 100, "repetition_penalty": 1.3}})
    for i in range(6):  # each question is 85 estimated tokens, each answer 19; 412 of the context for the history
        browser.ask(conv["id"], f"q{i} " + "x" * 240)
    last = fake.bodies[-1]
    assert last["repetition_penalty"] == 1.3 and last["max_tokens"] == 100 and last["stream"] is True
    messages = last["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[-1]["content"].startswith("q5 ")
    # 412 - 7 (system) - 85 (q5) leaves 320: q2..a4 (85 + 19 each turn) fit, a1 no longer does
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 3 + ["user"]
    assert messages[1]["content"].startswith("q2 ")
    assert len(fake.bodies[0]["messages"]) == 2  # the first question: system prompt + question


def test_paging_a_thousand_messages_reads_one_page(pair, database_url):
    gw, _, alice, _ = pair
    conv = alice.ok("POST", "/api/chat/conversations", json={})

    async def fill() -> None:
        db = create_engine(database_url)
        try:
            await ChatStore(db).add(conv["id"], [NewMessage("user" if i % 2 == 0 else "assistant", f"m{i}")
                                                 for i in range(1000)])
        finally:
            await db.dispose()

    asyncio.run(fill())
    path = f"/api/chat/conversations/{conv['id']}/messages"
    page = alice.get(path, params={"limit": 30}).json()
    assert [m["content"] for m in page["data"]] == [f"m{i}" for i in range(970, 1000)]
    assert page["has_more"] and page["next_before"] == 971
    seen = [m["seq"] for m in page["data"]]
    before = page["next_before"]
    while before is not None:
        page = alice.get(path, params={"limit": 200, "before": before}).json()
        seen = [m["seq"] for m in page["data"]] + seen
        before = page["next_before"]
    assert seen == list(range(1, 1001))
    assert alice.get(path, params={"limit": 1, "before": 10**12}).json()["data"][0]["seq"] == 1000
    assert alice.get(path, params={"before": -5}).json()["data"] == []
    started = time.perf_counter()
    for _ in range(10):
        assert len(alice.get(path, params={"limit": 50, "before": 500}).json()["data"]) == 50
    assert (time.perf_counter() - started) / 10 < 0.5


def test_stop_keeps_the_partial_answer_and_cancels_the_upstream(pair, upstream, database_url):
    gw, team, alice, _ = pair
    _, fake = upstream
    fake.behaviour.chunk_delay = 0.3
    conv = alice.ok("POST", "/api/chat/conversations", json={})
    result: dict = {}

    def ask() -> None:
        resp = alice.send("POST", f"/api/chat/conversations/{conv['id']}/messages", json={"content": "go"}, timeout=30)
        result["chunks"], result["final"] = sse(resp.text)

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(1.0)  # about three words streamed
    busy = alice.send("POST", f"/api/chat/conversations/{conv['id']}/messages", json={"content": "meanwhile"})
    assert busy.status_code == 409
    stop = alice.ok("POST", f"/api/chat/conversations/{conv['id']}/stop")
    assert stop["stopped"] is True
    thread.join(10)
    final = result["final"]
    answer = final["messages"][-1]
    assert final["status"] == answer["status"] == "stopped"
    assert 0 < answer["completion_tokens"] < 10
    assert answer["content"] == "".join(["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy",
                                         " dog"][: answer["completion_tokens"]])
    stored = alice.get(f"/api/chat/conversations/{conv['id']}/messages").json()["data"]
    assert stored[-1]["status"] == "stopped" and stored[-1]["content"] == answer["content"]
    deadline = time.monotonic() + 5
    while fake.cancelled_streams < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.cancelled_streams == 1  # the upstream saw the request go: the engine stops
    billed = [r for r in ledger_rows(database_url, wait_for=1) if r["endpoint"] == "chat.messages"]
    assert billed[0]["completion_tokens"] == answer["completion_tokens"] and billed[0]["status"] == 499
    assert billed[0]["team_id"] == team["id"] and billed[0]["prompt_tokens"] > 0  # estimated: no usage chunk
    assert alice.ok("POST", f"/api/chat/conversations/{conv['id']}/stop")["stopped"] is False


def test_leaving_mid_answer_stops_it_too(pair, upstream):
    gw, _, alice, _ = pair
    _, fake = upstream
    fake.behaviour.chunk_delay = 0.3
    conv = alice.ok("POST", "/api/chat/conversations", json={})
    with alice.http.stream("POST", f"/api/chat/conversations/{conv['id']}/messages", json={"content": "go"},
                           headers={"x-csrf-token": alice.csrf}) as resp:
        for line in resp.iter_lines():
            if '"content":" quick"' in line:
                break
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stored = alice.get(f"/api/chat/conversations/{conv['id']}/messages").json()["data"]
        if len(stored) == 2:
            break
        time.sleep(0.1)
    assert stored[-1]["status"] == "stopped" and stored[-1]["content"].startswith("The quick")
    deadline = time.monotonic() + 5
    while fake.cancelled_streams < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.cancelled_streams == 1


def test_regenerate_replaces_the_last_answer_and_edit_drops_what_followed(pair):
    gw, _, alice, _ = pair
    conv = alice.ok("POST", "/api/chat/conversations", json={})
    path = f"/api/chat/conversations/{conv['id']}"
    assert alice.send("POST", f"{path}/regenerate").status_code == 400  # nothing asked yet
    _, first = alice.ask(conv["id"], "one")
    _, second = alice.ask(conv["id"], "two")
    resp = alice.send("POST", f"{path}/regenerate", json={"model": "other"})
    _, final = sse(resp.text)
    [answer] = final["messages"]
    assert answer["model"] == "other" and answer["seq"] == 4
    stored = alice.get(f"{path}/messages").json()["data"]
    assert [(m["role"], m["id"]) for m in stored] == [
        ("user", first["messages"][0]["id"]), ("assistant", first["messages"][1]["id"]),
        ("user", second["messages"][0]["id"]), ("assistant", answer["id"])]

    edited = alice.send("POST", f"{path}/messages/{first['messages'][0]['id']}/edit", json={"content": "uno"})
    _, final = sse(edited.text)
    question, reply = final["messages"]
    assert (question["content"], question["seq"], reply["seq"]) == ("uno", 1, 2)
    stored = alice.get(f"{path}/messages").json()["data"]
    assert [m["content"] for m in stored] == ["uno", reply["content"]]
    not_user = alice.send("POST", f"{path}/messages/{reply['id']}/edit", json={"content": "x"})
    assert not_user.status_code == 400


def test_a_key_is_billed_as_the_key_and_a_stream_cut_short_is_kept_as_an_error(chat_gateway, upstream,
                                                                                database_url):
    gw = chat_gateway
    _, fake = upstream
    team = gw.team()
    user = make_user(gw, team["id"])
    key, key_row = gw.key(team["id"], user=user["id"])
    api = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30)
    conv = api.post("/api/chat/conversations", json={}).json()
    resp = api.post(f"/api/chat/conversations/{conv['id']}/messages", json={"content": "hi"})
    _, final = sse(resp.text)
    assert final["status"] == "complete"
    [row] = [r for r in ledger_rows(database_url, wait_for=1) if r["endpoint"] == "chat.messages"]
    assert (row["team_id"], row["user_id"], row["key_id"]) == (team["id"], user["id"], key_row["id"])
    assert row["request_id"] == resp.headers["x-request-id"]  # the record is the HTTP request's

    fake.behaviour.truncate_after = 3  # the upstream dies mid-answer
    resp = api.post(f"/api/chat/conversations/{conv['id']}/messages", json={"content": "again"})
    chunks, final = sse(resp.text)
    errors = [c for c in chunks if "error" in c]
    assert len(errors) == 1 and errors[0]["error"]["type"]
    answer = final["messages"][-1]
    assert final["status"] == answer["status"] == "error" and answer["content"] == "The quick brown"


def test_a_refused_call_stores_nothing(chat_gateway):
    gw = chat_gateway
    team = gw.team(rpm=1)
    browser = sign_in(gw.url, make_user(gw, team["id"])["name"])
    conv = browser.ok("POST", "/api/chat/conversations", json={})
    clear_of_minute_boundary()
    browser.ask(conv["id"], "first")
    refused = browser.send("POST", f"/api/chat/conversations/{conv['id']}/messages", json={"content": "second"})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    stored = browser.get(f"/api/chat/conversations/{conv['id']}/messages").json()["data"]
    assert [m["content"] for m in stored][0] == "first" and len(stored) == 2


def test_deleting_a_conversation_stops_its_answer_first(pair, upstream):
    gw, _, alice, _ = pair
    _, fake = upstream
    fake.behaviour.chunk_delay = 0.3
    conv = alice.ok("POST", "/api/chat/conversations", json={})
    path = f"/api/chat/conversations/{conv['id']}"
    result: dict = {}

    def ask() -> None:
        result["resp"] = alice.send("POST", f"{path}/messages", json={"content": "go"}, timeout=30)

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(0.8)
    assert alice.send("DELETE", path).status_code == 200
    thread.join(10)
    _, final = sse(result["resp"].text)
    assert final["status"] == "stopped"
    assert alice.get(path).status_code == 404
    assert alice.get("/api/chat/conversations").json()["data"] == []


def test_models_include_the_adapters_the_team_may_use(start_gateway, database_url, upstream):
    srv_up, _ = upstream
    gw = start_gateway(database_url=database_url, models=[
        {"name": "fake", "engine": "openai", "replicas": [f"{srv_up.url}/v1"], "adapters": [{"name": "lora"}]},
        {"name": "other", "engine": "openai", "replicas": [f"{srv_up.url}/v1"]}])
    team = gw.team(models=["fake*"])
    browser = sign_in(gw.url, make_user(gw, team["id"])["name"])
    assert [m["id"] for m in browser.get("/api/chat/models").json()["data"]] == ["fake", "fake:lora"]
    conv = browser.ok("POST", "/api/chat/conversations", json={"model": "fake:lora"})
    _, final = browser.ask(conv["id"], "hi")
    assert final["status"] == "complete" and final["messages"][1]["model"] == "fake:lora"
    key, _ = gw.key(team["id"], scopes=["inference"])
    listed = httpx.get(f"{gw.url}/api/chat/models", headers={"authorization": f"Bearer {key}"}).json()["data"]
    assert [m["id"] for m in listed] == ["fake", "fake:lora"]
