"""The assistant on /v1/chat/completions, through real sockets with the official openai client: a scripted function
model (tool calls streamed in pieces, in OpenAI's wire format), a scripted default model that answers from the
tool result it is given, the math tool, the weather tool against the fake OpenWeather."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.testing.fake_openweather import FakeOpenWeather
from lmops.testing.scripted_openai import Answer, Script, ScriptedChat

KEY_ENV = "LMOPS_TEST_ASSISTANT_WEATHER_KEY"
SOURCE = "\u2014 Source: "
MATH = '{"operation": "evaluate", "expression": "2**10"}'


def pieces(text: str, size: int = 7) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def from_tool_result(body: dict[str, Any]) -> Answer:
    """A default model that answers with the tool result it was given (else says it knows)."""
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    found = re.search(r"<tool_result>\n(.*)\n</tool_result>", system, re.S)
    return Answer(text=pieces(f"It is {found.group(1)}." if found else "I know this one.", 4), usage=(20, 6))


@dataclass
class Rig:
    url: str
    fn: ScriptedChat
    writer: ScriptedChat
    client: openai.OpenAI


@pytest.fixture
def rig(serve, settings_factory, monkeypatch):
    """``rig(function_answers, weather_url=None, **assistant)``: the gateway with the assistant in front of them."""

    def start(answers: list[Script], weather_url: str | None = None, writer: list[Script] | None = None,
              tools_off: bool = False, **assistant: Any) -> Rig:
        fn, wr = ScriptedChat(answers), ScriptedChat(writer or [from_tool_result])
        fn_srv, wr_srv = serve(fn), serve(wr)
        tools: dict[str, Any] = {"entry_points": False, "wikipedia": {"enabled": False},
                                 "weather": {"api_key_env": KEY_ENV, "timeout": 5,
                                             "base_url": weather_url or "http://127.0.0.1:9"}}
        if tools_off:
            tools.update(weather={"enabled": False}, math={"enabled": False})
        settings = settings_factory(
            [{"name": "fn", "engine": "openai", "replicas": [f"{fn_srv.url}/v1"]},
             {"name": "writer", "engine": "openai", "replicas": [f"{wr_srv.url}/v1"]}],
            assistant={"function_model": "fn", "default_model": "writer", "tools": tools, **assistant})
        srv = serve(create_app(settings))
        return Rig(srv.url, fn, wr, openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0))

    monkeypatch.delenv(KEY_ENV, raising=False)
    return start


def ask(rig: Rig, text: str, history: list[dict[str, Any]] | None = None, **kw: Any) -> Any:
    return rig.client.chat.completions.create(model="assistant", messages=[*(history or []),
                                                                          {"role": "user", "content": text}], **kw)


def test_math_tool_end_to_end(rig):
    r = rig([Answer(call="math", arguments=pieces(MATH))])
    resp = ask(r, "what is 2**10")
    assert resp.model == "assistant" and resp.object == "chat.completion"
    text = resp.choices[0].message.content
    assert text == "It is 1024.\n\n" + SOURCE + "SymPy" and resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (11 + 20, 5 + 6)  # both calls
    [asked] = r.fn.bodies
    assert asked["stream"] is True and asked["tool_choice"] == "required"
    assert [t["function"]["name"] for t in asked["tools"]] == ["weather", "math", "none"]
    assert [m["role"] for m in asked["messages"]] == ["system", "user"]
    assert asked["messages"][1]["content"] == "what is 2**10"
    [answered] = r.writer.bodies
    assert "<tool_result>\n1024\n</tool_result>" in answered["messages"][0]["content"]
    assert "tools" not in answered and answered["model"] == "writer"


def test_streamed_answer_ends_with_the_source_and_the_summed_usage(rig):
    r = rig([Answer(call="math", arguments=pieces(MATH, 3))])
    chunks = list(ask(r, "what is 2**10", stream=True, stream_options={"include_usage": True}))
    assert {c.model for c in chunks} == {"assistant"} and len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "It is 1024.\n\n" + SOURCE + "SymPy"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 11 + 5 + 20 + 6
    plain = list(ask(r, "what is 2**10", stream=True))  # no usage chunk unless asked
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"


def test_a_text_answer_goes_to_the_default_model_within_detect_tokens(rig):
    """The function model starts answering in text: after detect_tokens streamed tokens the default model is
    asked, long before the function model's stream would end, and that stream is closed."""
    r = rig([Answer(text=["word "] * 60, delay=0.05)], detect_tokens=4)
    start = time.monotonic()
    resp = ask(r, "tell me a story")
    assert resp.choices[0].message.content == "I know this one."
    assert SOURCE not in resp.choices[0].message.content
    assert r.writer.started[0] - r.fn.started[0] < 1.0  # 60 chunks at 0.05 s: the stream would last 3 s
    assert time.monotonic() - start < 2.5
    deadline = time.monotonic() + 3
    while r.fn.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.fn.cancelled == 1
    assert resp.usage.completion_tokens == 4 + 6  # the closed stream counts the chunks it delivered


def test_calling_none_answers_with_the_default_model(rig):
    r = rig([Answer(call="none", arguments=pieces("{}"), delay=0.05)])
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": "It is 12.\n\n" + SOURCE + "SymPy\n![cat](http://x/cat.png)"}]
    resp = ask(r, "thanks!", history, temperature=0.5, max_tokens=50)
    assert resp.choices[0].message.content == "I know this one."
    [asked] = r.fn.bodies
    assert asked["messages"][1:] == [{"role": "user", "content": "thanks!"}]  # the latest question only
    [answered] = r.writer.bodies
    assert answered["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "It is 12."},
                                    {"role": "user", "content": "thanks!"}]
    assert answered["temperature"] == 0.5 and answered["max_tokens"] == 50


def test_bad_arguments_are_sent_back_for_a_second_try(rig):
    r = rig([Answer(call="math", arguments=pieces('{"expression": "2**10"}')),
             Answer(call="math", arguments=pieces(MATH))])
    resp = ask(r, "what is 2**10")
    assert resp.choices[0].message.content.startswith("It is 1024.")
    first, second = r.fn.bodies
    assert len(second["messages"]) == 4
    call, result = second["messages"][2:]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"] == {
        "name": "math", "arguments": '{"expression": "2**10"}'}
    assert result["role"] == "tool" and result["tool_call_id"] == call["tool_calls"][0]["id"]
    assert "'operation' is a required property" in result["content"]
    assert resp.usage.prompt_tokens == 11 + 11 + 20  # every call counts


def test_arguments_still_wrong_after_the_reasks_get_a_clear_answer(rig):
    r = rig([Answer(call="math", arguments=['{"operation": "guess", "expression": "1"}'])], reasks=2)
    resp = ask(r, "what is 2**10")
    text = resp.choices[0].message.content
    assert text.startswith("Sorry, I could not work out how to answer that with my tools")
    assert "'guess' is not one of" in text
    assert len(r.fn.bodies) == 3 and r.writer.bodies == []
    chunks = list(ask(r, "again", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Sorry, I could not work out")


def test_weather_with_the_fake_openweather(rig, serve, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key")  # the key the fake accepts
    weather = serve(FakeOpenWeather().app())
    r = rig([Answer(call="weather", arguments=['{"city": ', '"Paris"}'])], weather_url=weather.url)
    text = ask(r, "weather in Paris?").choices[0].message.content
    assert text == "It is Paris, FR: 18 \u00b0C, light rain, humidity 72 %, wind 4 m/s.\n\n" + SOURCE + "OpenWeather"


def test_an_unconfigured_tool_is_a_clear_answer_not_an_error(rig):
    r = rig([Answer(call="weather", arguments=['{"city": "Paris"}'])])  # no API key in the environment
    resp = ask(r, "weather in Paris?")
    text = resp.choices[0].message.content
    assert text.startswith("Sorry, I could not get an answer from the weather tool: the weather tool is not "
                           "configured")
    assert r.writer.bodies == []


def test_an_unreachable_tool_is_a_clear_answer(rig, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    r = rig([Answer(call="weather", arguments=['{"city": "Paris"}'])])  # port 9: nothing listens
    text = ask(r, "weather in Paris?").choices[0].message.content
    assert text.startswith("Sorry, I could not get an answer from the weather tool:")


def test_models_list_the_assistant(rig):
    r = rig([Answer(call="none")])
    assert [m.id for m in r.client.models.list()] == ["fn", "writer", "assistant"]
    assert r.client.models.retrieve("assistant").id == "assistant"


def test_bad_requests_are_400_envelopes(rig):
    r = rig([Answer(call="none")])
    with pytest.raises(openai.BadRequestError) as info:
        ask(r, "hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert info.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as info:
        ask(r, "hi", n=2)
    assert info.value.body["param"] == "n"
    resp = httpx.post(f"{r.url}/v1/chat/completions", json={"model": "assistant", "messages": []}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"
    assert r.fn.bodies == []


def test_without_tools_the_default_model_answers_alone(rig):
    r = rig([Answer(call="math", arguments=[MATH])], tools_off=True)
    chunks = list(ask(r, "what is 2**10", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "I know this one."
    assert r.fn.bodies == [] and len(r.writer.bodies) == 1


def test_a_broken_function_model_stream_leaves_the_answer_to_the_default_model(rig):
    """The function model's stream breaks off mid-call (no [DONE]): the default model answers."""
    r = rig([Answer(call="math", arguments=pieces(MATH), cut_after=3)])
    resp = ask(r, "what is 2**10")
    assert resp.choices[0].message.content == "I know this one."
    assert len(r.fn.bodies) == 1 and len(r.writer.bodies) == 1


def test_the_web_chat_offers_the_assistant_in_laptop_mode(rig):
    r = rig([Answer(call="math", arguments=pieces(MATH))])
    with httpx.Client(base_url=r.url, timeout=30) as http:
        csrf = http.post("/api/chat/session", json={"username": "", "password": ""}).json()["csrf_token"]
        assert [m["id"] for m in http.get("/api/chat/models").json()["data"]] == ["fn", "writer", "assistant"]
        resp = http.post("/api/chat/conversations", json={"model": "assistant"}, headers={"x-csrf-token": csrf})
        assert resp.status_code == 201
        answered = http.post(f"/api/chat/conversations/{resp.json()['id']}/messages",
                             json={"content": "what is 2**10"}, headers={"x-csrf-token": csrf})
    final = [line for line in answered.text.split("\n") if line.startswith("data: {")][-1]
    assert '"content":"It is 1024.\\n\\n' + SOURCE + 'SymPy"' in final and '"model":"assistant"' in final


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_stops_the_function_model(rig, stream):
    r = rig([Answer(call="math", arguments=pieces(MATH, 1), delay=0.1)])  # 50 chunks, 5 s
    client = r.client.with_options(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        ask(Rig(r.url, r.fn, r.writer, client), "what is 2**10", stream=stream)
    deadline = time.monotonic() + 3
    while r.fn.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.fn.cancelled == 1 and r.fn.ended[0] - r.fn.started[0] < 2
    time.sleep(0.3)
    assert r.writer.bodies == []


def test_a_default_model_stream_that_breaks_ends_with_an_error_event(rig):
    r = rig([Answer(call="none")], writer=[Answer(text=pieces("It is a long answer.", 2), cut_after=3)])
    seen: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in ask(r, "hi", stream=True):
            seen += [c.delta.content or "" for c in chunk.choices]
    assert "".join(seen) == "It is "
    assert info.value.body["type"] == "upstream_error" and "without [DONE]" in info.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_during_the_answer_stops_the_default_model(rig, stream):
    r = rig([Answer(call="none")], writer=[Answer(text=["w "] * 50, delay=0.1)])
    if stream:
        with ask(r, "hi", stream=True) as chunks:
            next(iter(chunks))
            time.sleep(0.3)  # the reader stops here, the connection closes
    else:
        with pytest.raises(openai.APITimeoutError):
            ask(Rig(r.url, r.fn, r.writer, r.client.with_options(timeout=0.8)), "hi")
    deadline = time.monotonic() + 3
    while r.writer.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.writer.cancelled == 1 and r.writer.ended[0] - r.writer.started[0] < 2.5
