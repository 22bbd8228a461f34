"""The assistant in the web chat API, under access control: picked like a model when the team may use both its
models, its answer streamed and stored under its name, each inner call (function model, tool, default model)
recorded and billed once to the signed-in user's team, and Stop closing the default model's stream. The image
tool through lmops's own image generation, in front of the fake image backend."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from access.conftest import Gateway, start_gateway, upstream  # noqa: F401
from access.helpers import ledger_rows
from lmops.testing.fake_images import FakeImages
from lmops.testing.scripted_openai import Answer, Script, ScriptedChat

from .conftest import Browser, make_user, sign_in, sse

MATH = '{"operation": "evaluate", "expression": "2**10"}'
SOURCE = "\n\n\u2014 Source: "
PRICES = {"fn": {"input": 1000.0, "output": 2000.0}, "writer": {"input": 1000.0, "output": 2000.0},
          "painter": {"image": 0.04}}
OWN_IMAGE = re.compile(r"!\[a red square\]\((/v1/images/files/[A-Za-z0-9_-]+\?expires=\d+&signature=[0-9a-f]+)\)")


def from_tool_result(body: dict[str, Any]) -> Answer:
    """A default model that answers with the tool result it was given (else says it knows)."""
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    found = re.search(r"<tool_result>\n(.*)\n</tool_result>", system, re.S)
    return Answer(text=[f"It is {found.group(1)}." if found else "I know this one."], usage=(20, 6))


@dataclass
class Rig:
    gw: Gateway
    db: str
    fn: ScriptedChat
    writer: ScriptedChat
    images: FakeImages
    team: dict[str, Any]
    user: Browser

    def conversation(self) -> str:
        return str(self.user.ok("POST", "/api/chat/conversations", json={"model": "assistant"})["id"])

    def records(self, request_id: str, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = [r for r in ledger_rows(self.db, wait_for=count) if r["request_id"] == request_id]
            if len(rows) >= count:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # nothing more comes
        return [r for r in ledger_rows(self.db) if r["request_id"] == request_id]


@pytest.fixture
def rig(start_gateway, serve, tmp_path, monkeypatch):  # noqa: F811
    """``rig(function_answers, writer=None, team_models=None, image_model="painter")``: a signed-in user of a team
    in front of the gateway with the assistant (math and image tools) on scripted models."""

    def start(answers: list[Script], writer: list[Script] | None = None, team_models: list[str] | None = None,
              image_model: str = "painter") -> Rig:
        monkeypatch.setenv("LMOPS_SECRET", "an-assistant-test-secret-0123456789")
        fn, wr, images = ScriptedChat(answers), ScriptedChat(writer or [from_tool_result]), FakeImages()
        fn_srv, wr_srv, img_srv = serve(fn), serve(wr), serve(images)
        db = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
        gw = start_gateway(
            database_url=db, access={"prices": PRICES}, images={"data_dir": str(tmp_path / "data")},
            models=[{"name": "fn", "engine": "openai", "replicas": [f"{fn_srv.url}/v1"]},
                    {"name": "writer", "engine": "openai", "replicas": [f"{wr_srv.url}/v1"]},
                    {"name": "painter", "engine": "openai", "kind": "image", "replicas": [f"{img_srv.url}/v1"]}],
            assistant={"function_model": "fn", "default_model": "writer",
                       "tools": {"entry_points": False, "weather": {"enabled": False}, "wikipedia": {"enabled": False},
                                 "image": {"model": image_model}}})
        team = gw.team(**({"models": team_models} if team_models is not None else {}))
        user = sign_in(gw.url, make_user(gw, team["id"])["name"])
        return Rig(gw, db, fn, wr, images, team, user)

    return start


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def test_the_assistant_answers_in_the_chat_stored_and_each_inner_call_billed_once(rig):
    r = rig([Answer(call="math", arguments=[MATH[:9], MATH[9:]])])
    models = r.user.get("/api/chat/models").json()["data"]
    assert [m["id"] for m in models] == ["fn", "writer", "assistant"]  # not the image model: it makes no text
    refused = r.user.send("POST", "/api/chat/conversations", json={"model": "painter"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    conv = r.conversation()
    chunks, final = r.user.ask(conv, "what is 2**10?")
    assert {c["model"] for c in chunks} == {"assistant"}
    text = text_of(chunks)
    assert text == "It is 1024." + SOURCE + "SymPy"
    question, answer = final["messages"]
    assert (answer["content"], answer["model"], answer["status"]) == (text, "assistant", "complete")
    assert (answer["prompt_tokens"], answer["completion_tokens"]) == (11 + 20, 5 + 6)  # both inner calls
    assert "<p>It is 1024.</p>" in answer["html"]
    stored = r.user.get(f"/api/chat/conversations/{conv}/messages").json()["data"]
    assert [(m["role"], m["model"]) for m in stored] == [("user", None), ("assistant", "assistant")]
    rows = r.records(_request_id(r), 2)
    rows.sort(key=lambda x: x["endpoint"])
    assert [(x["endpoint"], x["model"], x["status"]) for x in rows] == [
        ("assistant.answer", "writer", 200), ("assistant.function", "fn", 200)]  # no record of the turn itself
    assert all(x["team_id"] == r.team["id"] and x["user_id"] == r.user.user["id"] for x in rows)
    assert [x["cost_usd"] for x in rows] == pytest.approx([20 * 0.001 + 6 * 0.002, 11 * 0.001 + 5 * 0.002])

    _, final = r.user.ask(conv, "and now?")  # the earlier answer reaches the default model without its source
    assert r.writer.bodies[-1]["messages"][-3:] == [
        {"role": "user", "content": "what is 2**10?"}, {"role": "assistant", "content": "It is 1024."},
        {"role": "user", "content": "and now?"}]
    assert r.fn.bodies[-1]["messages"][1:] == [{"role": "user", "content": "and now?"}]


def _request_id(r: Rig) -> str:
    """The request id of the last chat turn: every inner call of it carries it."""
    rows = ledger_rows(r.db, wait_for=2)
    return str(rows[-1]["request_id"])


def test_a_team_that_may_not_use_an_inner_model_does_not_see_the_assistant(rig):
    r = rig([Answer(call="none")], team_models=["writer"])
    assert [m["id"] for m in r.user.get("/api/chat/models").json()["data"]] == ["writer"]
    refused = r.user.send("POST", "/api/chat/conversations", json={"model": "assistant"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    conv = r.user.ok("POST", "/api/chat/conversations", json={})["id"]
    refused = r.user.send("POST", f"/api/chat/conversations/{conv}/messages",
                          json={"content": "2**10?", "model": "assistant"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert r.fn.bodies == [] and r.writer.bodies == []


def ask_meanwhile(r: Rig, conv: str, model: ScriptedChat) -> tuple[threading.Thread, dict[str, Any]]:
    """Ask "talk" in a thread, returned once ``model`` has been called; the result (status, chunks, final event)
    fills in when the answer ends."""
    result: dict[str, Any] = {}

    def ask() -> None:
        resp = r.user.send("POST", f"/api/chat/conversations/{conv}/messages", json={"content": "talk"}, timeout=60)
        result["status"] = resp.status_code
        result["chunks"], result["final"] = sse(resp.text)

    thread = threading.Thread(target=ask)
    thread.start()
    deadline = time.monotonic() + 20
    while not model.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread, result


def test_stop_mid_answer_closes_the_default_models_stream(rig):
    r = rig([Answer(call="none")], writer=[Answer(text=["word "] * 60, delay=0.2)])
    conv = r.conversation()
    thread, result = ask_meanwhile(r, conv, r.writer)
    time.sleep(1.0)  # a few words streamed
    assert r.user.ok("POST", f"/api/chat/conversations/{conv}/stop")["stopped"] is True
    thread.join(20)
    answer = result["final"]["messages"][-1]
    assert answer["status"] == "stopped" and answer["model"] == "assistant"
    assert answer["content"] == text_of(result["chunks"]) and 0 < answer["content"].count("word") < 60
    deadline = time.monotonic() + 10
    while r.writer.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.writer.cancelled == 1 and r.writer.ended[0] - r.writer.started[0] < 8  # 60 words would take 12 s
    rows = r.records(_request_id(r), 2)
    assert sorted((x["endpoint"], x["status"]) for x in rows) == [("assistant.answer", 499),
                                                                   ("assistant.function", 200)]
    billed = next(x for x in rows if x["endpoint"] == "assistant.answer")
    assert 0 < billed["completion_tokens"] < 60 and billed["cost_usd"] > 0  # what was streamed


def test_stop_while_the_function_model_decides_cancels_it_and_keeps_the_question(rig):
    """Stop before the answer opens (the function model is still streaming its choice): the function model's
    stream is closed and billed as cut short, no default model is called, and the turn is stored as stopped."""
    r = rig([Answer(text=["more "] * 60, delay=1.0)])  # 8 s before its text decides
    conv = r.conversation()
    thread, result = ask_meanwhile(r, conv, r.fn)
    time.sleep(0.5)
    assert r.user.ok("POST", f"/api/chat/conversations/{conv}/stop")["stopped"] is True
    thread.join(20)
    assert not thread.is_alive() and result["status"] == 200
    assert result["final"]["status"] == "stopped" and text_of(result["chunks"]) == ""
    assert [(m["role"], m["status"]) for m in result["final"]["messages"]] == [("user", "complete"),
                                                                              ("assistant", "stopped")]
    deadline = time.monotonic() + 10
    while r.fn.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.fn.cancelled == 1 and r.fn.ended[0] - r.fn.started[0] < 15 and not r.writer.started
    stored = r.user.ok("GET", f"/api/chat/conversations/{conv}/messages")["data"]
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [("user", "talk", "complete"),
                                                                       ("assistant", "", "stopped")]
    [row] = ledger_rows(r.db, wait_for=1)
    assert (row["endpoint"], row["status"]) == ("assistant.function", 499)


def test_the_image_tool_answers_with_lmops_own_image(rig):
    r = rig([Answer(call="image", arguments=['{"prompt": "a red', ' square"}']), Answer(call="none")])
    conv = r.conversation()
    chunks, final = r.user.ask(conv, "draw a red square")
    answer = final["messages"][-1]
    found = OWN_IMAGE.fullmatch(answer["content"].split(SOURCE)[0])
    assert found, answer["content"]
    assert answer["content"].endswith(SOURCE + "image model painter") and text_of(chunks) == answer["content"]
    url = found.group(1)
    assert f'<img src="{url.replace("&", "&amp;")}" alt="a red square">' in answer["html"]
    image = httpx.get(r.gw.url + url, timeout=10)  # no key, no cookie: the signature is the permission
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == r.images.images[0]
    assert r.images.requests[0] == {"model": "painter", "prompt": "a red square", "response_format": "b64_json"}
    assert r.writer.bodies == []  # no model writes an image link
    rows = r.records(_request_id(r), 2)
    assert sorted((x["endpoint"], x["model"]) for x in rows) == [("assistant.function", "fn"),
                                                                 ("assistant.image", "painter")]
    assert next(x for x in rows if x["model"] == "painter")["cost_usd"] == pytest.approx(0.04)

    r.user.ask(conv, "thanks")  # the image link and source line never reach the default model
    assert r.writer.bodies[-1]["messages"][-3:] == [
        {"role": "user", "content": "draw a red square"}, {"role": "assistant", "content": ""},
        {"role": "user", "content": "thanks"}]


def test_an_image_backend_error_is_a_clear_answer(rig):
    r = rig([Answer(call="image", arguments=['{"prompt": "a red square"}'])])
    r.images.behaviour.fail = True
    _, final = r.user.ask(r.conversation(), "draw a red square")
    answer = final["messages"][-1]
    assert answer["content"].startswith("Sorry, I could not get an answer from the image tool: the image model "
                                        "painter failed:")
    assert answer["status"] == "complete" and "/v1/images/files/" not in answer["content"]
    rows = r.records(_request_id(r), 2)
    failed = next(x for x in rows if x["endpoint"] == "assistant.image")
    assert failed["status"] == 502 and not failed["cost_usd"]


def test_an_image_tool_without_its_image_model_says_so(rig):
    r = rig([Answer(call="image", arguments=['{"prompt": "a red square"}'])], image_model="nope")
    _, final = r.user.ask(r.conversation(), "draw a red square")
    assert final["messages"][-1]["content"] == ("Sorry, I could not get an answer from the image tool: the image "
                                                "tool is not configured: there is no image model named 'nope'.")
    assert r.images.requests == [] and r.writer.bodies == []
