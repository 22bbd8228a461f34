"""Continuous batching in the embedded engine: concurrent requests decoded together (four slots here), through a
real gateway socket. Greedy answers must not depend on what else is in the batch."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lmops.app import create_app
from lmops.testing.server import ServerThread
from lmops.testing.settings import make_settings

PARALLEL = 4
QUEUE = 2


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = make_settings(tmp_path_factory.mktemp("batched"),
                             [{"name": "smollm2", "engine": "embedded", "context_length": 1024,
                               "parallel": PARALLEL, "queue_size": QUEUE}])
    srv = ServerThread(create_app(settings)).start()
    yield srv
    srv.stop()


def runner_of(server: ServerThread) -> Any:
    return server.server.config.app.state.services.core.router.deployment("smollm2").replicas[0].engine._batcher


PROMPTS = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain.",
           "How do bees make honey?"]


def chat(prompt: str, max_tokens: int = 24, **extra: Any) -> dict[str, Any]:
    """Token 2 ends SmolLM2's turn: banned, every answer runs to max_tokens. A seed makes the prompt decode afresh:
    reusing a slot's cached prefix splits the prompt's decode elsewhere, which changes the numerics slightly (as in
    llama-cpp-python's own generate), and these tests compare answers to the last bit."""
    return {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "logit_bias": {"2": -100}, "seed": 0, **extra}


def post(server: ServerThread, body: dict[str, Any], path: str = "/v1/chat/completions") -> dict[str, Any]:
    resp = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def stream(server: ServerThread, body: dict[str, Any]) -> dict[str, Any]:
    """A streamed chat answer: its text, finish reason, and when its first and last pieces of text came."""
    text, finish, times = [], None, []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True},
                      timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                if choice["delta"].get("content"):
                    text.append(choice["delta"]["content"])
                    times.append(time.monotonic())
                finish = choice.get("finish_reason") or finish
    return {"text": "".join(text), "finish": finish, "first": times[0], "last": times[-1]}


def test_concurrent_streams_give_the_same_greedy_output_as_one_at_a_time(batched):
    alone = [stream(batched, chat(p)) for p in PROMPTS]
    for a, b in zip(alone, alone[1:], strict=False):
        assert a["last"] <= b["first"]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: stream(batched, chat(p, 48)), PROMPTS))
    # Decoded together: every stream had sent text before any of them ended.
    assert max(s["first"] for s in together) < min(s["last"] for s in together)
    for one, many in zip(alone, together, strict=True):
        assert many["text"].startswith(one["text"]) and len(many["text"]) > len(one["text"])
        assert many["finish"] == "length"


def test_a_cancelled_stream_leaves_at_once_and_the_others_finish(batched):
    runner = runner_of(batched)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        others = [pool.submit(post, batched, chat(p, 150)) for p in PROMPTS[:2]]
        with httpx.stream("POST", f"{batched.url}/v1/chat/completions", json={**chat(PROMPTS[2], 150),
                                                                              "stream": True}, timeout=60) as resp:
            lines = resp.iter_lines()  # kept: a dropped line iterator closes the response when it is collected
            for _ in range(4):
                next(lines)
            deadline = time.monotonic() + 30
            while runner.active() < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert runner.active() == 3
            busy = {i for i, s in enumerate(runner._slots) if s is not None}
        deadline = time.monotonic() + 30
        while runner.active() != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.active() == 2 and not any(f.done() for f in others)  # left while the others run
        # Its KV cells are freed (those of a finished generation stay, for the next prompt starting the same).
        import llama_cpp

        (left,) = busy - {i for i, s in enumerate(runner._slots) if s is not None}
        assert llama_cpp.llama_memory_seq_pos_max(runner._ctx.memory, left) == -1
        for done in others:
            answer = done.result()
            assert answer["choices"][0]["finish_reason"] == "length"
            assert answer["usage"]["completion_tokens"] == 150


def test_a_json_schema_request_beside_free_ones(batched):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    constrained = {"model": "smollm2", "temperature": 0, "max_tokens": 60, "seed": 0,
                   "messages": [{"role": "user", "content": "Give the largest city of Japan as JSON."}],
                   "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}}
    alone = post(batched, constrained)["choices"][0]["message"]["content"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        free = [pool.submit(stream, batched, chat(p, 40)) for p in PROMPTS[:2]]
        beside = pool.submit(post, batched, constrained)
        texts = [f.result()["text"] for f in free]
        content = beside.result()["choices"][0]["message"]["content"]
    assert content == alone
    parsed = json.loads(content)
    assert isinstance(parsed["city"], str) and isinstance(parsed["population"], int)
    assert all(t and not t.lstrip().startswith("{") for t in texts)


def test_n_choices_are_decoded_together(batched):
    single = post(batched, chat(PROMPTS[0]))["choices"][0]["message"]["content"]
    answer = post(batched, {**chat(PROMPTS[0]), "n": 3})
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in answer["choices"]] == [single] * 3
    assert answer["usage"]["completion_tokens"] == 3 * 24
    seeded = {**chat(PROMPTS[1]), "n": 2, "temperature": 0.9, "seed": 7}
    sampled = post(batched, seeded)["choices"]
    assert sampled[0]["message"]["content"] != sampled[1]["message"]["content"]  # seed + k: different choices


def test_logprobs_do_not_depend_on_the_batch(batched):
    body = chat(PROMPTS[1], 12, logprobs=True, top_logprobs=3)
    alone = post(batched, body)["choices"][0]["logprobs"]["content"]
    prompt = {"model": "smollm2", "prompt": "The sky is blue because", "max_tokens": 4, "temperature": 0,
              "echo": True, "logprobs": 2}
    echo_alone = post(batched, prompt, "/v1/completions")["choices"][0]["logprobs"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        noise = [pool.submit(stream, batched, chat(p, 30)) for p in PROMPTS[2:]]
        beside = pool.submit(post, batched, body)
        echo = pool.submit(post, batched, prompt, "/v1/completions")
        entries = beside.result()["choices"][0]["logprobs"]["content"]
        echoed = echo.result()["choices"][0]["logprobs"]
        [f.result() for f in noise]
    assert len(entries) == 12
    assert [e["token"] for e in entries] == [e["token"] for e in alone]
    for a, b in zip(alone, entries, strict=True):
        assert b["logprob"] == pytest.approx(a["logprob"], abs=1e-3)
        assert [t["token"] for t in b["top_logprobs"]] == [t["token"] for t in a["top_logprobs"]]
    assert echoed["tokens"] == echo_alone["tokens"]
    assert echoed["token_logprobs"][0] is None
    assert echoed["token_logprobs"][1:] == pytest.approx(echo_alone["token_logprobs"][1:], abs=1e-3)


def test_a_full_queue_answers_429_beyond_the_slots_and_the_queue(batched):
    """parallel 4 + queue_size 2: six generations at once; the rest are refused at once."""
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: httpx.post(f"{batched.url}/v1/chat/completions",
                                                     json=chat("Tell a long story.", 60), timeout=120), range(10)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) >= PARALLEL + QUEUE, codes
    refused = [r for r in results if r.status_code == 429]
    assert refused, codes
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"


def test_a_long_prompt_is_read_in_chunks_while_another_stream_generates(batched):
    """A prompt longer than a step's 512 tokens is read over several steps, beside a stream that keeps going."""
    long = chat("Summarise: " + " ".join(f"item {i} is blue;" for i in range(100)), 16)
    alone = post(batched, long)
    assert alone["usage"]["prompt_tokens"] > 700
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(stream, batched, chat(PROMPTS[0], 250))
        time.sleep(0.5)
        beside = pool.submit(post, batched, long)
        answer = beside.result()
        answered = time.monotonic()
        other = running.result()
    assert answer["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
    assert answer["usage"] == alone["usage"]
    assert other["first"] < answered < other["last"] and other["finish"] == "length"


async def test_the_one_at_a_time_path_answers_as_the_batched_one():
    """``batching: false`` keeps the former path (llama-cpp-python's Llama.generate), the benchmark's reference."""
    from lmops.config import ModelConfig
    from lmops.engines.embedded_llamacpp import EmbeddedLlamaEngine

    answers = []
    for batching in (False, True):
        engine = EmbeddedLlamaEngine(ModelConfig(name="smollm2", engine="embedded", context_length=512,
                                                 batching=batching, parallel=2))
        await engine.start()
        try:
            assert (engine._batcher is not None) == batching
            answers.append(await engine.chat_completion(chat(PROMPTS[3], 20, n=2)))
        finally:
            await engine.close()
    old, new = ([c["message"]["content"] for c in a["choices"]] for a in answers)
    assert old == new and len(old) == 2 and old[0]
    assert answers[0]["usage"] == answers[1]["usage"]
