"""Function calling with the embedded model: a demanded call is made, under a grammar, in the OpenAI format."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}
WIKI = {"type": "function", "function": {
    "name": "wiki", "description": "Search Wikipedia",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


@pytest.fixture
def client(embedded) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{embedded.url}/v1", api_key="unused", max_retries=0)


def _arguments_fit(call, tool) -> dict:
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, tool["function"]["parameters"])
    return arguments


def test_a_named_function_is_called_with_arguments_that_fit_its_schema(client):
    resp = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WIKI, WEATHER], max_tokens=60,
                                          tool_choice={"type": "function", "function": {"name": "weather"}})
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "weather"
    _arguments_fit(call, WEATHER)


def test_required_calls_one_of_the_tools(client):
    resp = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER, WIKI], max_tokens=60,
                                          tool_choice="required", temperature=1.0, seed=4, n=3)
    for choice in resp.choices:
        (call,) = choice.message.tool_calls
        _arguments_fit(call, {"weather": WEATHER, "wiki": WIKI}[call.function.name])


def test_a_streamed_call_arrives_whole_and_ends_with_tool_calls(client):
    kwargs = dict(model="smollm2", messages=ASK, tools=[WEATHER], max_tokens=60, tool_choice="required", seed=1)
    plain = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    calls, finishes, text = [], [], ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            calls += c.delta.tool_calls or []
            text += c.delta.content or ""
            if c.finish_reason:
                finishes.append(c.finish_reason)
    (call,) = calls
    assert finishes == ["tool_calls"] and text == ""
    assert (call.function.name, json.loads(call.function.arguments)) == (
        plain.function.name, json.loads(plain.function.arguments))


def test_a_call_cut_short_by_max_tokens_is_returned_as_text(client):
    resp = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], max_tokens=3,
                                          tool_choice="required")
    choice = resp.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    assert choice.message.content.startswith("{")


def test_the_conversation_goes_on_after_a_call(client):
    first = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], max_tokens=60,
                                           tool_choice="required").choices[0].message
    call = first.tool_calls[0]
    messages = [*ASK, first.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21, "sky": "clear"})}]
    answer = client.chat.completions.create(model="smollm2", messages=messages, tools=[WEATHER], max_tokens=20)
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")


def test_long_length_bounds_are_left_to_the_caller(client):
    """llama.cpp cannot repeat a grammar rule ~1,500 times: a maxLength of 2,000 (the math tool's expression) is
    left out of the grammar instead of refusing the request; shorter bounds still hold."""
    tool = {"type": "function", "function": {
        "name": "math", "description": "Compute an expression",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 2000},
                                                        "unit": {"type": "string", "maxLength": 3}},
                       "required": ["expression", "unit"]}}}
    resp = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "2**10 in cm?"}],
                                          tools=[tool], tool_choice="required", max_tokens=60, seed=2)
    (call,) = resp.choices[0].message.tool_calls
    arguments = _arguments_fit(call, tool)
    assert len(arguments["unit"]) <= 3
