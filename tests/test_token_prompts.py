"""Completion prompts given as token ids (one list, or a list of them), as the OpenAI API and vLLM take them."""

from __future__ import annotations

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.protocol.completions import CompletionRequest
from lmops.testing.fake_openai import WORDS, FakeOpenAI

PROMPT = "The capital of France is"


@pytest.fixture
def client(embedded) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{embedded.url}/v1", api_key="unused", max_retries=0)


def test_a_prompt_of_token_ids_answers_as_its_text_does(client, direct_llama):
    tokens = direct_llama.tokenize(PROMPT.encode(), add_bos=True)
    as_text = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=6, temperature=0)
    as_ids = client.completions.create(model="smollm2", prompt=tokens, max_tokens=6, temperature=0)
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert as_ids.usage.prompt_tokens == len(tokens) == as_text.usage.prompt_tokens


def test_several_prompts_of_token_ids_get_n_choices_each_in_order(client, direct_llama):
    prompts = [direct_llama.tokenize(p.encode()) for p in (PROMPT, "Once upon a time")]
    resp = client.completions.create(model="smollm2", prompt=prompts, max_tokens=4, n=2, temperature=0)
    singles = [client.completions.create(model="smollm2", prompt=p, max_tokens=4, temperature=0).choices[0].text
               for p in prompts]
    assert [c.text for c in resp.choices] == [s for s in singles for _ in range(2)]
    assert resp.usage.prompt_tokens == sum(len(p) for p in prompts)


def test_an_echoed_prompt_of_token_ids_is_their_text_with_its_logprobs(client, direct_llama):
    tokens = direct_llama.tokenize(PROMPT.encode())
    by_ids = client.completions.create(model="smollm2", prompt=tokens, max_tokens=0, echo=True, logprobs=1)
    by_text = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    assert by_ids.choices[0].text == PROMPT
    assert by_ids.choices[0].logprobs.tokens == by_text.choices[0].logprobs.tokens
    assert by_ids.choices[0].logprobs.token_logprobs[0] is None
    assert by_ids.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        by_text.choices[0].logprobs.token_logprobs[1:], abs=1e-4)


@pytest.mark.parametrize("prompt,words", [
    ([49152], "the prompt names token ids this model does not have (49152); its vocabulary has 49152 tokens"),
    ([[1, 2], [3, 10 ** 6]], "(1000000)"),
    ([-1], "token ids are whole numbers from 0"),
    ([1, 2.5], "token ids are whole numbers from 0"),
    ([[]], "holds none"),
    (["a", [1]], "holds one kind"),
    ({"text": "a"}, "a string or a list of token ids"),
])
def test_a_bad_prompt_of_token_ids_is_a_400_that_says_why(embedded, prompt, words):
    resp = httpx.post(f"{embedded.url}/v1/completions", json={"model": "smollm2", "prompt": prompt, "max_tokens": 2})
    assert resp.status_code == 400, resp.text
    assert words in resp.json()["error"]["message"], resp.json()


def test_an_upstream_engine_gets_token_prompts_as_sent(serve, settings_factory):
    up = serve(FakeOpenAI())
    gateway = serve(create_app(settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}])))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    assert len(client.completions.create(model="m", prompt=[5, 6, 7], n=2).choices) == 2
    resp = client.completions.create(model="m", prompt=[[5, 6], [7], [8]], n=2)
    assert len(resp.choices) == 6 and resp.usage.completion_tokens == 6 * len(WORDS)


def test_budgets_count_choices_for_each_prompt_of_token_ids():
    assert CompletionRequest(model="m", prompt=[1, 2, 3], n=3).choices() == 3
    assert CompletionRequest(model="m", prompt=[[1, 2], [3]], n=3).choices() == 6
