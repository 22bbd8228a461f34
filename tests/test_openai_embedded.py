"""The OpenAI API served by the embedded llama.cpp model, through a real socket and the official client."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest


@pytest.fixture
def client(embedded) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{embedded.url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_embedded_model(client):
    ids = [m.id for m in client.models.list().data]
    assert "smollm2" in ids
    assert client.models.retrieve("smollm2").id == "smollm2"


def test_chat_completion_matches_llama_cpp_directly(client, direct_llama):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    resp = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=30, temperature=0)
    ref = direct_llama.create_chat_completion(messages, max_tokens=30, temperature=0)
    text = resp.choices[0].message.content
    assert resp.model == "smollm2"
    assert text == ref["choices"][0]["message"]["content"]
    assert resp.usage.prompt_tokens == ref["usage"]["prompt_tokens"]
    assert resp.usage.completion_tokens == ref["usage"]["completion_tokens"]


@pytest.mark.parametrize("max_tokens", [4, 5, 6])
def test_a_character_cut_by_max_tokens_is_left_out_and_max_tokens_holds(client, direct_llama, max_tokens):
    """This prompt answers "🌟🌟..." at temperature 0, each emoji three tokens: 4 and 5 tokens end inside one.

    The unfinished character is left out, not sent as U+FFFD. llama-cpp-python instead generates past
    max_tokens until the character is complete; lmops keeps max_tokens a hard cap (budgets reserve it)."""
    messages = [{"role": "user", "content": "Reply only with three emojis."}]
    resp = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=max_tokens, temperature=0)
    text = resp.choices[0].message.content
    assert text == "\N{GLOWING STAR}" * (max_tokens // 3)
    assert resp.usage.completion_tokens == max_tokens
    ref = direct_llama.create_chat_completion(messages, max_tokens=max_tokens, temperature=0)
    assert ref["choices"][0]["message"]["content"].startswith(text)  # the same answer, the same model
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=max_tokens, temperature=0, stream=True) if c.choices)
    assert streamed == text


def test_chat_completion_answers_with_usage(client):
    resp = client.chat.completions.create(
        model="smollm2", messages=[{"role": "system", "content": "Answer in one short sentence."},
                                   {"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30, temperature=0)
    text = resp.choices[0].message.content
    assert "Paris" in text
    assert resp.usage.prompt_tokens > 5
    assert 0 < resp.usage.completion_tokens <= 30
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.choices[0].finish_reason in ("stop", "length")


def test_chat_stream_with_usage_chunk(client):
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens == 12  # max_tokens reached: exactly 12 generated
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_same_seed_same_answer(client):
    kwargs = dict(model="smollm2", messages=[{"role": "user", "content": "Write a word."}], max_tokens=8,
                  temperature=1.0, seed=1234)
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b


def test_stop_sequence_cuts_the_answer(client):
    resp = client.completions.create(model="smollm2", prompt="1, 2, 3, 4, 5, 6,", max_tokens=20, temperature=0,
                                     stop=[" 9"])
    assert " 9" not in resp.choices[0].text
    assert resp.choices[0].finish_reason in ("stop", "length")


def test_text_completion_and_stream(client):
    resp = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=8, temperature=0)
    assert resp.object == "text_completion"
    assert resp.usage.completion_tokens == 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="smollm2", prompt="The sky is", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == resp.choices[0].text


def test_json_schema_response_format_is_enforced(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    resp = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Describe Paris as JSON."}], max_tokens=80,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    data = json.loads(resp.choices[0].message.content)
    assert set(data) >= {"city", "population"}
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


@pytest.mark.parametrize("schema", [
    {"anyOf": []},  # converts to an empty rule: llama.cpp cannot parse it
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": []}}}},
    {"type": "strange"},  # refused by the converter itself
])
def test_a_schema_llama_cpp_cannot_enforce_is_a_400_and_the_server_lives_on(client, schema):
    """Before: the unparsable grammar reached the sampler chain and the first token crashed the whole process."""
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert "response_format.json_schema.schema is not usable" in err.value.message
    ok = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert ok.usage.completion_tokens >= 1


def test_text_parts_are_read_and_an_image_is_refused_not_ignored(client):
    text = [{"type": "text", "text": "What is the capital of "}, {"type": "text", "text": "France?"}]
    resp = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": text}],
                                          max_tokens=8, temperature=0)
    plain = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=8,
        temperature=0)
    assert resp.choices[0].message.content == plain.choices[0].message.content
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": [text[0], image]}],
                                       max_tokens=4)
    assert "reads text only" in err.value.message and "image_url" in err.value.message


@pytest.mark.parametrize("path,body,words", [
    ("/v1/chat/completions", {"tool_choice": "required"}, "no function tools"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                              "tool_choice": {"type": "function", "function": {"name": "g"}}}, "not among the tools"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"enum": []}}, "required": ["x"]}}}], "tool_choice": "required"},
     "the tools' parameters schema is not usable"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": "f"}}, "tool_choice is"),
    ("/v1/chat/completions", {"tools": "f", "tool_choice": "required"}, "no function tools"),
    ("/v1/chat/completions", {"tools": 5, "tool_choice": "required"}, "no function tools"),
    ("/v1/completions", {"suffix": "and that is all."}, "suffix"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"best_of": 3, "n": 2}, "best_of"),
    ("/v1/chat/completions", {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
     "text only"),
    ("/v1/chat/completions", {"audio": {"voice": "alloy", "format": "wav"}}, "text only"),
])
def test_what_cannot_be_done_is_a_400_not_silently_ignored(embedded, path, body, words):
    base = {"messages": [{"role": "user", "content": "Hi"}]} if "chat" in path else {"prompt": "Once upon"}
    resp = httpx.post(f"{embedded.url}{path}", json={"model": "smollm2", "max_tokens": 2, **base, **body})
    assert resp.status_code == 400, resp.text
    assert words in resp.json()["error"]["message"]


def test_what_asks_for_nothing_the_model_cannot_do_is_served(client):
    """best_of equal to n ranks nothing, and text is the one modality: both are answered as usual."""
    resp = client.completions.create(model="smollm2", prompt="Once upon", max_tokens=2, n=2, best_of=2)
    assert len(resp.choices) == 2
    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                          modalities=["text"])
    assert chat.choices[0].message.content


def test_tools_with_tool_choice_auto_get_an_answer_in_text(client):
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    resp = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, tools=tools, tool_choice="auto")
    assert resp.choices[0].message.content and not resp.choices[0].message.tool_calls


def test_sampling_parameters_are_accepted(client):
    resp = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say something."}], max_tokens=6, temperature=0.5,
        top_p=0.9, presence_penalty=0.5, frequency_penalty=0.5, extra_body={"repetition_penalty": 1.1})
    assert resp.usage.completion_tokens <= 6


def test_full_queue_answers_429_with_retry_after(embedded):
    """queue_size=2: with 1 running and 2 waiting, further requests are refused at once."""
    import concurrent.futures

    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 40, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: httpx.post(f"{embedded.url}/v1/chat/completions", json=body,
                                                     timeout=120), range(8)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) >= 3
    refused = [r for r in results if r.status_code == 429]
    assert refused, codes
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"


LONG_ESSAY = {"model": "smollm2", "messages": [{"role": "user", "content": "Write a very long essay."}],
              "max_tokens": 400, "temperature": 0}


# Token 2 ends SmolLM2's turn: banned, an answer runs to max_tokens whatever the model's state (a greedy answer can
# come out shorter after other requests have warmed llama.cpp's cache).
ENDLESS = {**LONG_ESSAY, "logit_bias": {"2": -100}}


def engine_of(server):
    return server.server.config.app.state.services.core.router.deployment("smollm2").replicas[0].engine


def wait_for_pending(engine, count: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while engine._pending != count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine._pending == count


def test_the_queue_holds_a_place_for_each_choice_of_a_request(embedded):
    """queue_size=2: with a generation running, a request for 3 choices would put 3 behind it and is refused at
    once; one for 2 fits, and holds both places from the start. An idle engine takes any n."""
    import concurrent.futures

    engine = engine_of(embedded)
    small = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with httpx.stream("POST", f"{embedded.url}/v1/chat/completions", json={**ENDLESS, "stream": True},
                          timeout=60) as essay:
            lines = essay.iter_lines()  # kept: a dropped line iterator closes the response when it is collected
            next(lines)
            wait_for_pending(engine, 1)
            refused = httpx.post(f"{embedded.url}/v1/chat/completions", json={**small, "n": 3}, timeout=60)
            assert refused.status_code == 429, refused.text
            assert "busy" in refused.json()["error"]["message"]
            pair = pool.submit(httpx.post, f"{embedded.url}/v1/chat/completions", json={**small, "n": 2}, timeout=60)
            wait_for_pending(engine, 3)  # both choices hold their place while the essay runs
        assert [c["index"] for c in pair.result().json()["choices"]] == [0, 1]
    wait_for_pending(engine, 0)
    many = httpx.post(f"{embedded.url}/v1/chat/completions", json={**small, "n": 4}, timeout=60)
    assert many.status_code == 200 and len(many.json()["choices"]) == 4


def test_a_client_leaving_during_the_first_choice_frees_the_places_of_the_rest(embedded):
    engine = engine_of(embedded)
    with httpx.stream("POST", f"{embedded.url}/v1/chat/completions", json={**ENDLESS, "stream": True, "n": 3},
                      timeout=60) as resp:
        lines = resp.iter_lines()  # kept: a dropped line iterator closes the response when it is collected
        for _ in range(4):
            next(lines)
        assert engine._pending == 3
    wait_for_pending(engine, 0)


def test_client_disconnect_stops_the_generation(embedded):
    """A client that leaves mid-stream frees the model at once instead of generating 400 tokens."""
    engine = engine_of(embedded)
    with httpx.stream("POST", f"{embedded.url}/v1/chat/completions", json={**LONG_ESSAY, "stream": True},
                      timeout=60) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i >= 6:
                break
    wait_for_pending(engine, 0)
    finish, generated = engine.last_generation
    assert finish == "cancelled" and generated < 100


def test_client_disconnect_stops_a_non_streamed_generation(embedded):
    engine = engine_of(embedded)
    body = json.dumps(LONG_ESSAY).encode()
    host, port = embedded.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    wait_for_pending(engine, 1, 5)
    time.sleep(0.5)
    sock.close()
    wait_for_pending(engine, 0)
    finish, generated = engine.last_generation
    assert finish == "cancelled" and generated < 400


def test_an_empty_prompt_is_a_400_and_the_model_stays_in_service(client, embedded):
    """This model has no BOS token: an empty prompt has no tokens at all, on which llama.cpp asserts."""
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="smollm2", prompt="", max_tokens=4)
    assert "prompt is empty" in err.value.message
    assert httpx.get(f"{embedded.url}/ready").json()["models"]["smollm2"] is True
    assert client.completions.create(model="smollm2", prompt="Once", max_tokens=2).usage.completion_tokens >= 1


def test_a_failed_generation_is_a_502_for_that_request_only(client, embedded, monkeypatch):
    """An in-process engine that fails on one request is still loaded: the replica is not ejected (with the
    default failure threshold of 1 that would refuse every other request with 503 until a health check)."""
    runner = engine_of(embedded)._batcher
    real = runner._sampler

    def broken(*args, **kwargs):
        monkeypatch.setattr(runner, "_sampler", real)  # the next request generates normally
        raise RuntimeError("injected failure")

    monkeypatch.setattr(runner, "_sampler", broken)
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(model="smollm2", prompt="Once", max_tokens=2)
    assert err.value.status_code == 502 and "injected failure" in err.value.message
    assert httpx.get(f"{embedded.url}/ready").json()["models"]["smollm2"] is True
    assert client.completions.create(model="smollm2", prompt="Once", max_tokens=2).usage.completion_tokens >= 1
