"""The hf-transformers engine (static batching) serving the bundled SmolLM2 GGUF through a real gateway socket and
the official client. The model is dequantized to float32 by transformers; generation on a loaded CI CPU is slow,
so answers are kept short and timed waits are generous."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from lmops.app import create_app
from lmops.config import EngineKind
from lmops.engines.base import EngineError
from lmops.preflight import startup_problems
from lmops.testing.server import ServerThread
from lmops.testing.settings import make_settings

MODEL = "smollm2-hf"
HF_MODEL = {"name": MODEL, "engine": "hf-transformers", "context_length": 512,
            "hf": {"batch_size": 4, "max_wait_ms": 2000}}
QUESTIONS = ["What is the capital of France?", "What is 2+2?", "Name a colour.", "Say hello."]


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        srv = ServerThread(create_app(make_settings(tmp_path_factory.mktemp("hf"), [HF_MODEL]))).start(timeout=300)
        yield srv
        srv.stop()


@pytest.fixture(scope="module")
def client(hf_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{hf_server.url}/v1", api_key="unused", max_retries=0, timeout=600)


def engine_of(server: ServerThread) -> Any:
    return server.server.config.app.state.services.core.router.deployment(MODEL).replicas[0].engine


def ask(client: openai.OpenAI, question: str, **kw: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                          **{"max_tokens": 12, "temperature": 0, **kw})


def test_chat_completion_answers_with_text_and_usage(client, hf_server):
    resp = ask(client, QUESTIONS[0])
    assert resp.choices[0].message.content == "The capital of France is Paris."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 37  # the chat template's tokens, as llama.cpp counts them for this prompt
    assert resp.usage.completion_tokens == 7  # "The capital of France is Paris." (end-of-text not counted)
    assert engine_of(hf_server).kind == EngineKind.hf.value


def test_max_tokens_cuts_the_answer_and_streams_the_same_text(client):
    resp = ask(client, QUESTIONS[0], max_tokens=3)
    assert resp.choices[0].message.content == "The capital of"
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 3
    chunks = list(ask(client, QUESTIONS[0], max_tokens=3, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The capital of"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # token by token


def test_a_stop_string_ends_the_answer_before_it(client):
    resp = ask(client, QUESTIONS[0], stop=[" Paris"])
    assert resp.choices[0].message.content == "The capital of France is"
    assert resp.choices[0].finish_reason == "stop"


def test_text_completion(client):
    resp = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=2, temperature=0)
    assert resp.choices[0].text == " Paris."
    assert resp.usage.completion_tokens == 2 and resp.usage.prompt_tokens == 5
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=2,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " Paris."
    assert chunks[-1].usage.completion_tokens == 2


def test_concurrent_requests_are_batched_and_greedy_answers_match_alone(client, hf_server):
    engine = engine_of(hf_server)
    alone = [ask(client, q, max_tokens=8).choices[0].message.content for q in QUESTIONS]
    before = len(engine.batch_sizes)
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:  # within max_wait_ms (2 s) of each other: one batch
        together = list(pool.map(lambda q: ask(client, q, max_tokens=8), QUESTIONS))
    assert list(engine.batch_sizes)[before:] == [len(QUESTIONS)]
    assert [r.choices[0].message.content for r in together] == alone


def test_sampled_requests_answer_beside_greedy_ones(client, hf_server):
    """Each row samples with its own settings: the greedy one in a sampled batch keeps its greedy answer."""
    engine = engine_of(hf_server)
    before = len(engine.batch_sizes)
    with ThreadPoolExecutor(2) as pool:
        greedy = pool.submit(ask, client, QUESTIONS[0])
        sampled = pool.submit(ask, client, QUESTIONS[1], temperature=1.0, top_p=0.9)
        assert greedy.result().choices[0].message.content == "The capital of France is Paris."
        assert sampled.result().usage.completion_tokens > 0
    assert list(engine.batch_sizes)[before:] == [2]


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"n": 2}, "n"),
])
def test_unsupported_features_are_a_400(client, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, QUESTIONS[0], **extra)
    error = info.value.body
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert "hf-transformers engine" in error["message"]


def test_without_the_hf_extra_startup_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if gguf were not installed
    settings = make_settings(tmp_path, [HF_MODEL])
    problems = startup_problems(settings)
    assert len(problems) == 1 and "gguf" in problems[0] and "lmops[hf]" in problems[0]
    with pytest.raises(EngineError, match=r"lmops\[hf\]"):
        create_app(settings)



def test_a_client_that_leaves_is_dropped_and_its_batch_goes_on(client, hf_server):
    engine = engine_of(hf_server)
    before = len(engine.batch_sizes)

    def leave_early() -> str:
        with ask(client, QUESTIONS[2], max_tokens=60, stream=True) as stream:
            return "".join(c.choices[0].delta.content or "" for _, c in zip(range(3), stream, strict=False))

    with ThreadPoolExecutor(2) as pool:
        stays = pool.submit(ask, client, "Write a long story about a dragon.", max_tokens=60)
        left = pool.submit(leave_early)
        assert left.result()  # it had its first words before it left
        answer = stays.result()
    assert list(engine.batch_sizes)[before:] == [2]
    assert answer.usage.completion_tokens == 60 and answer.choices[0].finish_reason == "length"
    (cancelled, tokens), (finished, _) = sorted(engine.last_batch)  # its row stopped at the client's leaving
    assert (cancelled, finished) == ("cancelled", "length") and tokens < 60
