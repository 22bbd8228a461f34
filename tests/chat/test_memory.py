"""Conversation memory: a model configured with the summary strategy gets a running summary of the older turns
(made by the summary model through the gateway's road, stored, billed) and the latest turns within its budget; a
failed summary falls back to the window; regenerate and edit never use a summary of messages they drop."""

from __future__ import annotations

from typing import Any

import pytest

from lmops.chat.history import estimate_tokens
from lmops.chat.memory import SUMMARY_HEADING, SUMMARY_PROMPT
from lmops.config import ConfigError, load_settings
from lmops.testing.fake_openai import Behaviour, FakeOpenAI
from lmops.testing.scripted_openai import Answer, ScriptedChat

from access.helpers import ledger_rows

from .conftest import make_user, sign_in, sse

CONTEXT = 1000
MAX_TOKENS = 700  # the conversation's: 300 tokens of history (question included)
BUDGET = CONTEXT - MAX_TOKENS


def question(i: int) -> str:
    return f"q{i} " + "x" * 120  # 45 estimated tokens


def reply(i: int) -> str:
    return f"a{i} " + "y" * 55  # 24: a turn is 69


def is_summary_call(body: dict[str, Any]) -> bool:
    return body["messages"][0] == {"role": "system", "content": SUMMARY_PROMPT}


class Upstream(ScriptedChat):
    """Answers a question ``q<i> ...`` with ``reply(i)``, and a summary call with ``S<n>`` (the n-th summary)."""

    def __init__(self) -> None:
        super().__init__([self.answer])
        self.summaries = 0

    def answer(self, body: dict[str, Any]) -> Answer:
        if is_summary_call(body):
            self.summaries += 1
            return Answer(text=[f"S{self.summaries}", " remembered."], usage=(40, 3))
        asked = body["messages"][-1]["content"]
        return Answer(text=[reply(int(asked[1:].split(" ")[0]))])

    def answers_sent(self) -> list[dict[str, Any]]:
        return [b for b in self.bodies if not is_summary_call(b)]

    def summary_calls(self) -> list[dict[str, Any]]:
        return [b for b in self.bodies if is_summary_call(b)]


def gateway_with(start_gateway, database_url: str, up_url: str, memory: dict[str, Any],
                 more: list[dict[str, Any]] = ()):  # type: ignore[assignment]
    return start_gateway(database_url=database_url, models=[
        {"name": "fake", "engine": "openai", "replicas": [f"{up_url}/v1"], "context_length": CONTEXT,
         "memory": memory}, *more])


def new_chat(gw) -> tuple[Any, dict[str, Any]]:  # type: ignore[no-untyped-def]
    browser = sign_in(gw.url, make_user(gw, gw.team()["id"])["name"])
    conv = browser.ok("POST", "/api/chat/conversations", json={"params": {"max_tokens": MAX_TOKENS}})
    return browser, conv


def contents(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"]]


def test_a_running_summary_replaces_the_older_turns_and_is_billed(start_gateway, database_url, serve):
    up = Upstream()
    gw = gateway_with(start_gateway, database_url, serve(up).url, {"strategy": "summary"})
    browser, conv = new_chat(gw)
    path = f"/api/chat/conversations/{conv['id']}/messages"
    for i in range(4):  # three earlier turns (207 tokens) still fit the 255 left beside a question
        _, final = browser.ask(conv["id"], question(i))
        assert final["summary"] is None
    assert up.summaries == 0 and browser.get(path).json()["summary"] is None
    assert contents(up.bodies[-1]) == [question(0), reply(0), question(1), reply(1), question(2), reply(2),
                                       question(3)]

    _, final = browser.ask(conv["id"], question(4))  # four do not: the older ones are summarised
    assert final["status"] == "complete"
    [call] = up.summary_calls()
    folded = call["messages"][1]["content"]
    assert call["model"] == "fake" and call["max_tokens"] > 0
    assert all(f"{t}: {text}" in folded for t, text in [("User", question(0)), ("Assistant", reply(2))])
    assert question(3) not in folded and "Summary so far" not in folded  # the latest turn is kept word for word
    sent = up.bodies[-1]["messages"]
    assert sent == [{"role": "system", "content": SUMMARY_HEADING + "S1 remembered."},
                    {"role": "user", "content": question(3)}, {"role": "assistant", "content": reply(3)},
                    {"role": "user", "content": question(4)}]
    assert sum(estimate_tokens(m["content"]) for m in sent) <= BUDGET
    marker = browser.get(path).json()["summary"]
    assert (marker["through_seq"], marker["model"], marker["content"]) == (6, "fake", "S1 remembered.")
    assert final["summary"] == marker

    _, final = browser.ask(conv["id"], question(5))  # the turns after the summary fit again: no new one
    assert up.summaries == 1 and final["summary"]["through_seq"] == 6
    assert contents(up.bodies[-1]) == [SUMMARY_HEADING + "S1 remembered.", question(3), reply(3), question(4),
                                       reply(4), question(5)]
    browser.ask(conv["id"], question(6))
    browser.ask(conv["id"], question(7))  # q3..a6 with the summary no longer fit: the summary runs on
    assert up.summaries == 2
    second = up.summary_calls()[-1]["messages"][1]["content"]
    assert second.startswith("Summary so far:\nS1 remembered.\n\nNew turns:\nUser: " + question(3))
    assert question(2) not in second and question(6) not in second
    sent = up.bodies[-1]["messages"]
    assert contents(up.bodies[-1]) == [SUMMARY_HEADING + "S2 remembered.", question(6), reply(6), question(7)]
    assert sum(estimate_tokens(m["content"]) for m in sent) <= BUDGET
    assert browser.get(path).json()["summary"]["through_seq"] == 12
    assert len(up.answers_sent()) == 8

    rows = ledger_rows(database_url, wait_for=10)
    summaries = [r for r in rows if r["endpoint"] == "chat.summary"]
    assert len(summaries) == 2 and len([r for r in rows if r["endpoint"] == "chat.messages"]) == 8
    for row in summaries:
        assert (row["team_id"], row["user_id"], row["model"]) == (browser.user["team_id"], browser.user["id"], "fake")
        assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (40, 3, 200)
        assert row["cost_usd"] == pytest.approx(40 * 0.001 + 3 * 0.002)


def test_a_failed_summary_falls_back_to_the_latest_turns(start_gateway, database_url, serve):
    up = Upstream()
    broken = serve(FakeOpenAI(Behaviour(fail=True)))
    gw = gateway_with(start_gateway, database_url, serve(up).url, {"strategy": "summary", "summary_model": "notes"},
                      [{"name": "notes", "engine": "openai", "replicas": [f"{broken.url}/v1"]}])
    browser, conv = new_chat(gw)
    for i in range(5):
        _, final = browser.ask(conv["id"], question(i))
    assert final["status"] == "complete" and final["summary"] is None
    assert contents(up.bodies[-1]) == [question(1), reply(1), question(2), reply(2), question(3), reply(3),
                                       question(4)]  # the window: as the window strategy sends it
    assert up.summaries == 0
    assert browser.get(f"/api/chat/conversations/{conv['id']}/messages").json()["summary"] is None
    rows = ledger_rows(database_url, wait_for=6)
    [failed] = [r for r in rows if r["endpoint"] == "chat.summary"]
    assert failed["model"] == "notes" and failed["status"] >= 500 and failed["user_id"] == browser.user["id"]


def test_a_summary_model_the_team_may_not_use_is_refused_and_the_answer_given(start_gateway, database_url, serve):
    up = Upstream()
    url = serve(up).url
    gw = gateway_with(start_gateway, database_url, url, {"strategy": "summary", "summary_model": "notes"},
                      [{"name": "notes", "engine": "openai", "replicas": [f"{url}/v1"]}])
    browser = sign_in(gw.url, make_user(gw, gw.team(models=["fake"])["id"])["name"])
    conv = browser.ok("POST", "/api/chat/conversations", json={"params": {"max_tokens": MAX_TOKENS}})
    for i in range(5):
        _, final = browser.ask(conv["id"], question(i))
    assert final["status"] == "complete" and final["summary"] is None
    assert up.summaries == 0 and len(up.bodies) == 5  # the summary call never reached the upstream
    assert contents(up.bodies[-1])[0] == question(1)


def test_the_window_strategy_makes_no_summary(start_gateway, database_url, serve):
    up = Upstream()
    gw = gateway_with(start_gateway, database_url, serve(up).url, {"strategy": "window"})
    browser, conv = new_chat(gw)
    for i in range(6):
        browser.ask(conv["id"], question(i))
    assert up.summaries == 0
    assert contents(up.bodies[-1]) == [question(2), reply(2), question(3), reply(3), question(4), reply(4),
                                       question(5)]
    assert browser.get(f"/api/chat/conversations/{conv['id']}/messages").json()["summary"] is None


def test_regenerate_keeps_the_summary_and_an_edit_before_its_cut_drops_it(start_gateway, database_url, serve):
    up = Upstream()
    gw = gateway_with(start_gateway, database_url, serve(up).url, {"strategy": "summary"})
    browser, conv = new_chat(gw)
    path = f"/api/chat/conversations/{conv['id']}"
    for i in range(5):
        browser.ask(conv["id"], question(i))
    assert up.summaries == 1 and browser.get(f"{path}/messages").json()["summary"]["through_seq"] == 6

    _, final = sse(browser.send("POST", f"{path}/regenerate").text)  # the cut (seq 9) is after the summary's
    assert final["status"] == "complete" and final["summary"]["through_seq"] == 6
    assert contents(up.bodies[-1]) == [SUMMARY_HEADING + "S1 remembered.", question(3), reply(3), question(4)]

    stored = browser.get(f"{path}/messages").json()["data"]
    q2 = next(m for m in stored if m["content"] == question(2))
    assert q2["seq"] == 5  # the summary covers it
    resp = browser.send("POST", f"{path}/messages/{q2['id']}/edit", json={"content": question(9)})
    _, final = sse(resp.text)
    assert final["status"] == "complete" and final["summary"] is None
    assert contents(up.bodies[-1]) == [question(0), reply(0), question(1), reply(1), question(9)]
    assert up.summaries == 1
    assert browser.get(f"{path}/messages").json()["summary"] is None  # the summary of dropped messages is gone


def test_the_memory_setting_is_checked(tmp_path):
    config = tmp_path / "lmops.yaml"
    config.write_text("models:\n  - name: m\n    engine: openai\n    replicas: [http://127.0.0.1:9/v1]\n"
                      "    memory: {strategy: summary, summary_model: nope}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    [problem] = err.value.problems
    assert problem.location == "models.0.memory.summary_model" and "'nope'" in problem.message
    assert problem.line == 5
    config.write_text("models:\n  - name: m\n    engine: openai\n    replicas: [http://127.0.0.1:9/v1]\n"
                      "    memory: {strategy: forget, keep_share: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert sorted(p.location for p in err.value.problems) == ["models.0.memory.keep_share",
                                                              "models.0.memory.strategy"]
    config.write_text("models:\n  - name: m\n    engine: openai\n    replicas: [http://127.0.0.1:9/v1]\n"
                      "    memory: {strategy: summary, summary_model: m}\n")
    assert load_settings(config).models[0].memory.summary_model == "m"
