"""Several choices per request (``n``): passed through to an upstream engine, generated one by one in-process."""

from __future__ import annotations

import openai
import pytest

from lmops.app import create_app
from lmops.testing.fake_openai import WORDS, FakeOpenAI

CHAT = [{"role": "user", "content": "Name a fruit."}]


@pytest.fixture
def upstream_client(serve, settings_factory) -> openai.OpenAI:
    up = serve(FakeOpenAI())
    gateway = serve(create_app(settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}])))
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def client(embedded) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{embedded.url}/v1", api_key="unused", max_retries=0)


def test_an_upstream_engines_choices_pass_through(upstream_client):
    resp = upstream_client.chat.completions.create(model="m", messages=CHAT, n=3)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert {c.message.content for c in resp.choices} == {"".join(WORDS)}
    assert resp.usage.completion_tokens == 3 * len(WORDS)


def test_an_upstream_engines_interleaved_stream_passes_through(upstream_client):
    texts: dict[int, str] = {}
    usage = None
    for chunk in upstream_client.chat.completions.create(model="m", messages=CHAT, n=2, stream=True,
                                                         stream_options={"include_usage": True}):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
        usage = chunk.usage or usage
    assert texts == {0: "".join(WORDS), 1: "".join(WORDS)}
    assert usage.completion_tokens == 2 * len(WORDS)


@pytest.mark.parametrize("n", [0, 129, 2.5])
def test_n_out_of_range_is_a_400_naming_it(upstream_client, n):
    with pytest.raises(openai.BadRequestError) as err:
        upstream_client.chat.completions.create(model="m", messages=CHAT, extra_body={"n": n})
    assert err.value.body["param"] == "n"


def test_embedded_choices_are_whole_generations_seeded_one_after_another(client):
    kwargs = dict(model="smollm2", messages=CHAT, max_tokens=6, temperature=1.0, logprobs=True)
    resp = client.chat.completions.create(n=3, seed=11, **kwargs)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    singles = [client.chat.completions.create(seed=11 + i, **kwargs).choices[0] for i in range(3)]
    assert [c.message.content for c in resp.choices] == [c.message.content for c in singles]
    assert len({c.message.content for c in resp.choices}) > 1  # sampled apart, not one answer copied
    assert resp.usage.completion_tokens == sum(len(c.logprobs.content) for c in resp.choices)
    assert resp.usage.prompt_tokens == client.chat.completions.create(seed=11, **kwargs).usage.prompt_tokens


def test_embedded_choices_stream_one_after_another_with_one_usage_chunk(client):
    kwargs = dict(model="smollm2", messages=CHAT, max_tokens=6, temperature=1.0, seed=5, n=2)
    plain = client.chat.completions.create(**kwargs)
    texts: dict[int, str] = {}
    order, usages = [], []
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        if chunk.usage:
            usages.append(chunk.usage)
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            order.append(c.index)
    assert texts == {c.index: c.message.content for c in plain.choices}
    assert order == sorted(order)  # choice 0 whole, then choice 1
    assert [u.completion_tokens for u in usages] == [plain.usage.completion_tokens]


def test_embedded_completion_choices_each_echo_the_prompt(client):
    resp = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=4, n=2, echo=True,
                                     seed=3, temperature=1.0)
    assert len(resp.choices) == 2 and all(c.text.startswith("Once upon a time") for c in resp.choices)


def test_embedded_completion_of_several_prompts_answers_each_n_times_in_order(client):
    prompts = ["Once upon a time", "The capital of France is"]
    resp = client.completions.create(model="smollm2", prompt=prompts, max_tokens=5, n=2, temperature=0)
    singles = [client.completions.create(model="smollm2", prompt=p, max_tokens=5, temperature=0) for p in prompts]
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert [c.text for c in resp.choices] == [s.choices[0].text for s in singles for _ in range(2)]
    assert resp.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)  # each prompt counted once
    assert resp.usage.completion_tokens == 2 * sum(s.usage.completion_tokens for s in singles)
    streamed: dict[int, str] = {}
    for chunk in client.completions.create(model="smollm2", prompt=prompts, max_tokens=5, temperature=0, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == {0: singles[0].choices[0].text, 1: singles[1].choices[0].text}


def test_an_upstream_engine_gets_the_prompts_as_sent(upstream_client):
    resp = upstream_client.completions.create(model="m", prompt=["a", "b", "c"], n=2)
    assert len(resp.choices) == 6 and resp.usage.completion_tokens == 6 * len(WORDS)


def test_an_empty_list_of_prompts_is_a_400(upstream_client):
    with pytest.raises(openai.BadRequestError) as err:
        upstream_client.completions.create(model="m", prompt=[])
    assert err.value.body["param"] == "prompt" and "at least one" in err.value.body["message"]


def test_a_completions_choices_are_n_for_each_prompt():
    """What budgets reserve max_tokens for (the guard multiplies by it; see test_access_http)."""
    from lmops.protocol.chat import ChatCompletionRequest
    from lmops.protocol.completions import CompletionRequest

    assert CompletionRequest(model="m", prompt=["a", "b"], n=3).choices() == 6
    assert CompletionRequest(model="m", prompt="a", n=3).choices() == 3
    assert ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], n=4).choices() == 4
