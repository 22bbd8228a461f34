"""Log-probabilities and logit_bias from the embedded llama.cpp model, through a real socket and the openai client.

The reference is llama-cpp-python itself, run directly on the same GGUF with every position's logits kept.
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest

PROMPT = "The capital of France is"


@pytest.fixture
def client(embedded) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{embedded.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def logits_llama():
    """The same model directly, keeping the logits of every position (what llama-cpp-python's logprobs need)."""
    from llama_cpp import Llama

    from lmops.engines.bundled_model import default_model_path

    return Llama(default_model_path(), n_ctx=1024, logits_all=True, verbose=False)


def test_completion_logprobs_match_llama_cpp_run_directly(client, logits_llama):
    resp = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    ref = logits_llama.create_completion(PROMPT, max_tokens=6, temperature=0, logprobs=3)
    got, want = resp.choices[0].logprobs, ref["choices"][0]["logprobs"]
    assert resp.choices[0].text == ref["choices"][0]["text"]
    assert got.tokens == want["tokens"]
    assert got.token_logprobs == pytest.approx(want["token_logprobs"], abs=1e-3)
    assert len(got.token_logprobs) == resp.usage.completion_tokens
    for mine, theirs in zip(got.top_logprobs, want["top_logprobs"], strict=True):
        assert set(mine) == set(theirs)  # the 3 most likely, and the chosen token (one of them when greedy)
        assert [mine[t] for t in theirs] == pytest.approx(list(theirs.values()), abs=1e-3)
    text = resp.choices[0].text
    assert [text[o:o + len(t)] for o, t in zip(got.text_offset, got.tokens, strict=True)] == got.tokens


def _reference_prompt_logprobs(llama, prompt: str) -> tuple[list[str], list[float]]:
    """The prompt's tokens, and the log-probability of each after the first given the tokens before it, from the
    logits llama-cpp-python keeps for every position (its own ``echo`` logprobs are one position off)."""
    import numpy as np

    tokens = llama.tokenize(prompt.encode(), add_bos=True)
    llama.reset()
    llama.eval(tokens)
    rows = llama.scores[:len(tokens)].astype(np.float64)
    log_softmax = rows - rows.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    return ([llama.detokenize([t]).decode() for t in tokens],
            [float(log_softmax[i, t]) for i, t in enumerate(tokens[1:])])


def test_echo_with_logprobs_scores_the_prompt_then_the_answer(client, logits_llama):
    resp = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=3, temperature=0, echo=True,
                                     logprobs=2)
    alone = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2)
    choice, got = resp.choices[0], resp.choices[0].logprobs
    assert choice.text == PROMPT + alone.choices[0].text
    n_prompt = resp.usage.prompt_tokens
    assert len(got.tokens) == n_prompt + resp.usage.completion_tokens
    words, want = _reference_prompt_logprobs(logits_llama, PROMPT)
    assert got.tokens[:n_prompt] == words
    assert got.token_logprobs[0] is None and got.top_logprobs[0] is None  # nothing before it predicts it
    assert got.token_logprobs[1:n_prompt] == pytest.approx(want, abs=1e-3)
    for top, token, logprob in zip(got.top_logprobs[1:n_prompt], words[1:], want, strict=True):
        assert top[token] == pytest.approx(logprob, abs=1e-3) and len(top) in (2, 3)
        assert all(lp <= 0 for lp in top.values())
    # The answer's entries are those of the same greedy completion without echo.
    assert got.tokens[n_prompt:] == alone.choices[0].logprobs.tokens
    assert got.token_logprobs[n_prompt:] == pytest.approx(alone.choices[0].logprobs.token_logprobs, abs=1e-4)
    assert [choice.text[o:o + len(t)] for o, t in zip(got.text_offset, got.tokens, strict=True)] == got.tokens


def test_a_long_prompt_is_scored_in_pieces_that_agree_with_the_whole(client, logits_llama):
    from lmops.engines.prompt_logprobs import CHUNK

    prompt = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(12))
    words, want = _reference_prompt_logprobs(logits_llama, prompt)
    assert len(words) > 2 * CHUNK  # three pieces, the last one partial
    got = client.completions.create(model="smollm2", prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    assert got.choices[0].logprobs.tokens == words
    assert got.choices[0].logprobs.token_logprobs[1:] == pytest.approx(want, abs=1e-3)


def test_max_tokens_0_with_echo_scores_the_prompt_alone(client):
    first = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    other = client.completions.create(model="smollm2", prompt="Bananas are yellow", max_tokens=0, echo=True,
                                      logprobs=0)
    again = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    choice = first.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert first.usage.completion_tokens == 0 and len(choice.logprobs.tokens) == first.usage.prompt_tokens
    assert "".join(choice.logprobs.tokens) == PROMPT
    assert "".join(other.choices[0].logprobs.tokens) == "Bananas are yellow"
    # Scoring leaves nothing behind that changes the next scoring of the same prompt.
    assert again.choices[0].logprobs.token_logprobs[1:] == pytest.approx(choice.logprobs.token_logprobs[1:],
                                                                         abs=1e-4)
    plain = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=4, temperature=0)
    assert plain.choices[0].text == client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=4,
                                                              temperature=0).choices[0].text


def test_streamed_echo_sends_the_scored_prompt_first(client):
    kwargs = dict(model="smollm2", prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=1)
    whole = client.completions.create(**kwargs).choices[0]
    chunks = [c for c in client.completions.create(stream=True, **kwargs) if c.choices and c.choices[0].logprobs]
    echoed = chunks[0].choices[0]
    assert echoed.text == PROMPT
    n_prompt = len(echoed.logprobs.tokens)
    assert echoed.logprobs.tokens == whole.logprobs.tokens[:n_prompt]
    assert echoed.logprobs.token_logprobs[0] is None
    assert echoed.logprobs.token_logprobs[1:] == pytest.approx(whole.logprobs.token_logprobs[1:n_prompt], abs=1e-4)
    offsets = [o for c in chunks for o in c.choices[0].logprobs.text_offset]
    assert offsets == whole.logprobs.text_offset
    assert "".join(c.choices[0].text for c in chunks) == whole.text


def test_chat_logprobs_are_the_greedy_choices_with_their_alternatives(client):
    resp = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Name a colour."}],
                                          max_tokens=8, temperature=0, logprobs=True, top_logprobs=4)
    choice = resp.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == resp.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0 and bytes(e.bytes).decode() == e.token
        assert len(e.top_logprobs) == 4
        ranked = [t.logprob for t in e.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert sum(math.exp(lp) for lp in ranked) <= 1.0 + 1e-6


def test_streamed_chat_logprobs_travel_with_their_text(client):
    kwargs = dict(model="smollm2", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8,
                  temperature=0, logprobs=True)
    plain = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    streamed = []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        choice = chunk.choices[0]
        if choice.delta.content:
            assert "".join(e.token for e in choice.logprobs.content) == choice.delta.content
            streamed += choice.logprobs.content
    assert [(e.token, e.top_logprobs) for e in streamed] == [(e.token, []) for e in plain]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in plain], abs=1e-4)


def test_a_stop_sequence_takes_its_tokens_logprobs_with_it(client):
    full = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=0)
    tokens = full.choices[0].logprobs.tokens
    stop = tokens[2].strip() or tokens[2]
    cut = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=0,
                                    stop=[stop])
    assert "".join(cut.choices[0].logprobs.tokens) == cut.choices[0].text
    assert cut.choices[0].logprobs.tokens == tokens[:len(cut.choices[0].logprobs.tokens)]
    assert all(len(top) == 1 for top in cut.choices[0].logprobs.top_logprobs)  # logprobs=0: the chosen token


def test_without_logprobs_there_are_none(client):
    resp = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=3)
    assert resp.choices[0].logprobs is None


def _greedy_tokens(client, **extra) -> list[str]:
    resp = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0,
                                     **extra)
    return resp.choices[0].logprobs.tokens


def test_logit_bias_forces_and_forbids_tokens(client, logits_llama):
    greedy = _greedy_tokens(client)
    first = logits_llama.tokenize(greedy[0].encode(), add_bos=False)
    assert len(first) == 1
    banned = _greedy_tokens(client, logit_bias={str(first[0]): -100})
    assert banned[0] != greedy[0] and greedy[0] not in banned
    forced_id = logits_llama.tokenize(b" banana", add_bos=False)[0]
    forced = _greedy_tokens(client, logit_bias={str(forced_id): 100})
    word = logits_llama.detokenize([forced_id]).decode()
    assert forced == [word] * 4


@pytest.mark.parametrize("path,body,param,words", [
    ("/v1/chat/completions", {"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
    ("/v1/chat/completions", {"logit_bias": {"5": 101}}, "logit_bias", "between -100 and 100"),
    ("/v1/chat/completions", {"logit_bias": {"999999": 5}}, None, "vocabulary has 49152 tokens"),
    ("/v1/chat/completions", {"top_logprobs": 2}, None, "needs logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "20"),
    ("/v1/chat/completions", {"logprobs": "yes"}, "logprobs", "bool"),
    ("/v1/completions", {"logprobs": 21}, "logprobs", "20"),
    ("/v1/completions", {"max_tokens": 0}, None, "only useful with echo"),
    ("/v1/chat/completions", {"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
])
def test_bad_logprobs_and_logit_bias_are_400s_that_say_why(embedded, path, body, param, words):
    base = ({"messages": [{"role": "user", "content": "Hi"}]} if "chat" in path else {"prompt": PROMPT})
    resp = httpx.post(f"{embedded.url}{path}", json={"model": "smollm2", "max_tokens": 2, **base, **body})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert words in err["message"], err
    if param is not None:
        assert err["param"] == param, err
