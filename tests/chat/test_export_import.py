"""Export (XLSX read back with openpyxl, CSV, JSON, Markdown: one row per message) and import of ChatGPT and
Open WebUI exports (files built here in their shapes)."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

import orjson
import pytest
from openpyxl import load_workbook

from .conftest import make_user, sign_in

COLUMNS = ["conversation_id", "conversation_title", "time", "role", "model", "parameters", "prompt_tokens",
           "completion_tokens", "text"]
T0 = 1_700_000_000.5  # 2023-11-14T22:13:20.5Z


def chatgpt_export() -> list[dict]:
    """Two conversations as ChatGPT's conversations.json has them: a tree of nodes, the shown branch ending at
    current_node (here the second answer to an edited question; the first branch is not shown)."""
    def node(ident, parent, children, role=None, text=None, at=None, model=None, parts=None):
        message = None if role is None else {
            "id": ident, "author": {"role": role, "name": None, "metadata": {}}, "create_time": at,
            "update_time": None, "content": {"content_type": "text", "parts": parts if parts is not None else [text]},
            "status": "finished_successfully", "end_turn": True, "weight": 1.0,
            "metadata": {"model_slug": model} if model else {}, "recipient": "all"}
        return {"id": ident, "message": message, "parent": parent, "children": children}

    first = {"title": "Paris trip", "create_time": T0, "update_time": T0 + 60, "current_node": "a2",
             "conversation_id": "c-1", "id": "c-1", "mapping": {
                 "root": node("root", None, ["sys"]),
                 "sys": node("sys", "root", ["u1", "u2"], "system", ""),
                 "u1": node("u1", "sys", ["a1"], "user", "Plan a trip", T0 + 1),
                 "a1": node("a1", "u1", [], "assistant", "An old answer", T0 + 2, "gpt-4"),
                 "u2": node("u2", "sys", ["a2"], "user", "Plan a trip to Paris", T0 + 3),
                 "a2": node("a2", "u2", ["t1"], "assistant", "Day 1: the Louvre.", T0 + 4, "gpt-4o"),
             }}
    second = {"title": "Image", "create_time": T0 + 100, "current_node": "b2", "mapping": {
        "b1": node("b1", None, ["b2"], "user", None, T0 + 101,
                   parts=[{"content_type": "image_asset_pointer", "asset_pointer": "file-x"}, "What is this?"]),
        "b2": node("b2", "b1", [], "assistant", "A cat.", T0 + 102, "gpt-4o"),
        "tool": node("tool", "b1", [], "tool", "ignored", T0 + 103),
    }}
    return [first, second]


def openwebui_export() -> list[dict]:
    """Open WebUI's export of all chats: history.messages keyed by id with parentId, currentId the last shown
    (timestamps in seconds); a second chat with only the messages list (timestamps in milliseconds)."""
    history = {
        "m1": {"id": "m1", "parentId": None, "childrenIds": ["m2"], "role": "user", "content": "Hallo",
               "timestamp": int(T0)},
        "m2": {"id": "m2", "parentId": "m1", "childrenIds": ["m3"], "role": "assistant",
               "content": "Hi! How can I help?", "model": "llama3:8b", "timestamp": int(T0) + 5},
        "m3": {"id": "m3", "parentId": "m2", "childrenIds": [], "role": "user", "content": "Nothing.",
               "timestamp": int(T0) + 9},
        "x": {"id": "x", "parentId": "m1", "childrenIds": [], "role": "assistant", "content": "regenerated away",
              "timestamp": int(T0) + 6},
    }
    return [
        {"id": "w-1", "user_id": "u", "title": "Greeting", "created_at": int(T0), "updated_at": int(T0) + 9,
         "chat": {"id": "", "title": "Greeting", "models": ["llama3:8b"], "history": {"currentId": "m3",
                                                                                     "messages": history},
                  "messages": list(history.values()), "timestamp": int(T0) * 1000}},
        {"id": "w-2", "title": "List only", "created_at": int(T0),
         "chat": {"messages": [{"role": "user", "content": "one", "timestamp": int(T0 * 1000)},
                               {"role": "assistant", "content": "two", "timestamp": int(T0 * 1000) + 1000}]}},
    ]


@pytest.fixture
def browser(chat_gateway):
    gw = chat_gateway
    return sign_in(gw.url, make_user(gw, gw.team()["id"])["name"])


def test_export_in_every_format_has_one_row_per_message(browser):
    conv = browser.ok("POST", "/api/chat/conversations", json={"title": "Quotes, \"commas\"",
                                                               "params": {"temperature": 0.3}})
    _, final = browser.ask(conv["id"], "line one\nline two, with a comma \x07 and a bell")
    other = browser.ok("POST", "/api/chat/conversations", json={"title": "other"})
    browser.ask(other["id"], "second")
    question, answer = final["messages"]

    rows = orjson.loads(browser.get("/api/chat/export", params={"format": "json"}).content)
    assert len(rows) == 4 and list(rows[0]) == COLUMNS
    assert [(r["conversation_id"], r["role"]) for r in rows] == [
        (conv["id"], "user"), (conv["id"], "assistant"), (other["id"], "user"), (other["id"], "assistant")]
    assert rows[1] == {"conversation_id": conv["id"], "conversation_title": "Quotes, \"commas\"",
                       "time": rows[1]["time"], "role": "assistant", "model": "fake",
                       "parameters": {"temperature": 0.3}, "prompt_tokens": 7, "completion_tokens": 10,
                       "text": answer["content"]}
    assert datetime.fromisoformat(rows[1]["time"].replace("Z", "+00:00")).tzinfo is not None
    assert rows[0]["text"] == question["content"]

    resp = browser.get("/api/chat/export", params={"format": "csv", "conversation": conv["id"]})
    assert resp.headers["content-type"].startswith("text/csv")
    assert 'filename="lmops-chat.csv"' in resp.headers["content-disposition"]
    table = list(csv.reader(io.StringIO(resp.text)))
    assert table[0] == COLUMNS and len(table) == 3
    assert table[1][8] == question["content"] and table[2][5] == '{"temperature":0.3}' and table[2][7] == "10"

    resp = browser.get("/api/chat/export", params={"format": "xlsx"})
    sheet = load_workbook(io.BytesIO(resp.content), read_only=True)["messages"]
    cells = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert cells[0] == COLUMNS and len(cells) == 5
    assert cells[1][0] == conv["id"] and cells[1][3] == "user"
    assert cells[1][8] == "line one\nline two, with a comma  and a bell"  # a control character Excel refuses
    assert cells[2][4] == "fake" and cells[2][6] == 7 and cells[2][7] == 10 and cells[2][8] == answer["content"]

    md = browser.get("/api/chat/export", params={"format": "md"}).text
    assert md.startswith('# Quotes, "commas"') and "# other" in md
    assert f"**assistant (fake)** · {rows[1]['time']}\n\n{answer['content']}" in md

    assert browser.get("/api/chat/export", params={"format": "pdf"}).status_code == 400
    assert browser.get("/api/chat/export", params={"conversation": "conv_nope"}).status_code == 404


def test_chatgpt_and_openwebui_exports_are_imported(browser):
    resp = browser.send("POST", "/api/chat/import", content=orjson.dumps(chatgpt_export()),
                        headers={"content-type": "application/json"})
    assert resp.status_code == 201, resp.text
    done = resp.json()
    assert done["sources"] == ["chatgpt"] and len(done["conversations"]) == 2 and done["messages"] == 4
    paris = browser.get(f"/api/chat/conversations/{done['conversations'][0]}").json()
    assert paris["title"] == "Paris trip" and paris["created_at"] == int(T0)
    msgs = browser.get(f"/api/chat/conversations/{paris['id']}/messages").json()["data"]
    assert [(m["role"], m["content"], m["model"]) for m in msgs] == [
        ("user", "Plan a trip to Paris", None), ("assistant", "Day 1: the Louvre.", "gpt-4o")]
    assert msgs[0]["created_at"] == int(T0 + 3)
    image = browser.get(f"/api/chat/conversations/{done['conversations'][1]}/messages").json()["data"]
    assert [m["content"] for m in image] == ["What is this?", "A cat."]

    resp = browser.send("POST", "/api/chat/import", json=openwebui_export())
    assert resp.status_code == 201, resp.text
    done = resp.json()
    assert done["sources"] == ["openwebui"] and done["messages"] == 5
    greeting = browser.get(f"/api/chat/conversations/{done['conversations'][0]}/messages").json()["data"]
    assert [(m["role"], m["content"]) for m in greeting] == [
        ("user", "Hallo"), ("assistant", "Hi! How can I help?"), ("user", "Nothing.")]
    assert greeting[1]["model"] == "llama3:8b" and greeting[2]["created_at"] == int(T0) + 9
    listed = browser.get(f"/api/chat/conversations/{done['conversations'][1]}/messages").json()["data"]
    assert [(m["content"], m["created_at"]) for m in listed] == [("one", int(T0)), ("two", int(T0) + 1)]
    found = browser.get("/api/chat/conversations", params={"q": "louvre"}).json()["data"]
    assert [c["title"] for c in found] == ["Paris trip"]

    # the imported conversation goes on like any other
    _, final = browser.ask(done["conversations"][0], "Bye")
    assert final["messages"][0]["seq"] == 4
    assert datetime.fromtimestamp(final["messages"][0]["created_at"], timezone.utc).year >= 2026


@pytest.mark.parametrize("body", [b"{", b"42", b'"x"', b"[1]", b'[{"title": "no messages"}]',
                                  b'[{"mapping": {"a": 1}, "current_node": "a"}]'])
def test_a_bad_import_is_a_400_or_imports_nothing_broken(browser, body):
    resp = browser.send("POST", "/api/chat/import", content=body, headers={"content-type": "application/json"})
    if resp.status_code == 201:  # a well-formed conversation without usable messages: an empty one
        assert resp.json()["messages"] == 0
    else:
        assert resp.status_code == 400 and resp.json()["error"]["message"]
