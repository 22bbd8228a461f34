"""A second real engine process — llama-cpp-python's own OpenAI-compatible server — as an `openai` upstream."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.engines.bundled_model import default_model_path
from lmops.testing.server import free_port

pytest.importorskip("sse_starlette", reason="llama_cpp.server needs llama-cpp-python[server]")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "stderr.log"
    log = open(log_path, "wb")  # a file, not a pipe: llama.cpp logs more than a pipe buffer holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", default_model_path(), "--model_alias", "smol",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1",
         # by default llama_cpp.server aborts a running stream whenever any new request (a health probe) arrives
         "--interrupt_requests", "False"],
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def client(llama_server, serve, settings_factory):
    settings = settings_factory([{"name": "remote-smol", "engine": "openai", "upstream_model": "smol",
                                  "replicas": [f"{llama_server}/v1"], "timeout": 60}])
    srv = serve(create_app(settings))
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)


def test_chat_through_the_llama_cpp_server(client, llama_server):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    resp = client.chat.completions.create(model="remote-smol", messages=messages, max_tokens=16, temperature=0)
    direct = openai.OpenAI(base_url=f"{llama_server}/v1", api_key="x").chat.completions.create(
        model="smol", messages=messages, max_tokens=16, temperature=0)
    assert resp.model == "remote-smol"
    assert resp.choices[0].message.content == direct.choices[0].message.content
    assert resp.usage.completion_tokens == direct.usage.completion_tokens > 0


def test_stream_and_completion_through_the_llama_cpp_server(client):
    # llama_cpp.server sends no usage chunk; lmops still gives the client one, counted from delivered chunks.
    chunks = list(client.chat.completions.create(
        model="remote-smol", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(content)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="remote-smol", prompt="1, 2, 3, 4,", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert "5" in streamed
    comp = client.completions.create(model="remote-smol", prompt="1, 2, 3, 4,", max_tokens=6, temperature=0)
    assert "5" in comp.choices[0].text and comp.usage.completion_tokens == 6


def test_logprobs_pass_through_and_agree_with_the_embedded_engines(client, embedded):
    """Two implementations of the same numbers: llama.cpp's server computes them upstream (passed through lmops
    untouched), lmops's embedded engine computes its own."""
    # greedy on both sides: the server's own default repeat_penalty (1.1) would change the choice
    ask = dict(prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2,
               extra_body={"repeat_penalty": 1.0})
    remote = client.completions.create(model="remote-smol", **ask).choices[0].logprobs
    local_client = openai.OpenAI(base_url=f"{embedded.url}/v1", api_key="x", max_retries=0)
    local = local_client.completions.create(model="smollm2", **ask).choices[0].logprobs
    assert remote.tokens == local.tokens and len(remote.tokens) == 5
    assert local.token_logprobs == pytest.approx(remote.token_logprobs, abs=1e-3)
    for theirs, ours in zip(remote.top_logprobs, local.top_logprobs, strict=True):
        assert set(theirs) <= set(ours)  # the server lists the top 2; lmops the top 2 and the chosen token
        assert [ours[t] for t in theirs] == pytest.approx(list(theirs.values()), abs=1e-3)
