"""How soon the assistant's router decides (issue 23's target: within the function model's first 8 streamed tokens).

The function model (a scripted upstream) streams its answer one token per ``--token-ms``; the default model answers
at once. For each case, streamed ``/v1/chat/completions`` requests to ``assistant``:

- ``direct``: the function model answers in text (200 tokens) instead of calling a function: the router must stop
  reading after ``assistant.detect_tokens`` (8) tokens and hand the question to the default model;
- ``none``: it calls the ``none`` function: decided at the call's first chunk;
- ``tool``: it calls ``math`` (arguments in 6 pieces): decided when the call is complete, then SymPy runs.

Per case: the function model's tokens read before the decision (its request record's completion tokens, from the
ledger), its stream's duration until lmops closed it, and the assistant's time to first token, medians. A
decision "within 8 tokens" reads ≤ 8 tokens and closes the stream about 8 x token-ms after it started.

    python bench/bench_assistant_routing.py --requests 20 --token-ms 10
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from lmops.app import create_app
from lmops.assistant.calls import FUNCTION_ENDPOINT
from lmops.testing.fake_openai import FakeOpenAI
from lmops.testing.scripted_openai import Answer, ScriptedChat
from lmops.testing.server import ServerThread
from lmops.testing.settings import make_settings

MATH_ARGUMENTS = ['{"oper', 'ation": "ev', 'aluate", ', '"expression"', ': "2**', '10"}']


def first_token_ms(client: httpx.Client, question: str) -> float:
    start = time.perf_counter()
    body = {"model": "assistant", "stream": True, "messages": [{"role": "user", "content": question}]}
    first = None
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line:
                first = (time.perf_counter() - start) * 1000.0
    assert first is not None, "no answer text"
    return first


def run_case(name: str, answer: Answer, requests: int) -> dict[str, float | int | str]:
    fn = ScriptedChat([answer])
    fn_srv, writer = ServerThread(fn).start(), ServerThread(FakeOpenAI()).start()
    tmp = Path(tempfile.mkdtemp(prefix="lmops-bench-assistant-"))
    tools = {"entry_points": False, "wikipedia": {"enabled": False}, "weather": {"enabled": False}}
    settings = make_settings(tmp, [{"name": "fn", "engine": "openai", "replicas": [f"{fn_srv.url}/v1"]},
                                   {"name": "writer", "engine": "openai", "replicas": [f"{writer.url}/v1"]}],
                             assistant={"function_model": "fn", "default_model": "writer", "tools": tools},
                             server={"log_level": "warning"})
    gateway = ServerThread(create_app(settings)).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            ttft = [first_token_ms(client, "What is 2**10?") for _ in range(requests + 2)][2:]
            time.sleep(0.5)  # the ledger's flush
    finally:
        gateway.stop()
        fn_srv.stop()
        writer.stop()
    with sqlite3.connect(tmp / "lmops.db") as db:
        tokens = [row[0] for row in db.execute("SELECT completion_tokens FROM request_records WHERE endpoint = ? "
                                               "ORDER BY created_at", (FUNCTION_ENDPOINT,))][2:]
    read_ms = [(end - start) * 1000.0 for start, end in zip(fn.started, fn.ended, strict=True)][2:]
    return {"case": name, "requests": requests, "tokens_read_max": max(tokens),
            "tokens_read_median": statistics.median(tokens), "function_stream_ms": round(statistics.median(read_ms), 1),
            "assistant_ttft_ms": round(statistics.median(ttft), 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--token-ms", type=float, default=10.0)
    args = p.parse_args()
    delay = args.token_ms / 1000.0
    cases = {"direct": Answer(text=["word "] * 200, delay=delay, usage=(30, 200)),
             "none": Answer(call="none", arguments=["{}"], delay=delay, usage=(30, 2)),
             "tool": Answer(call="math", arguments=MATH_ARGUMENTS, delay=delay, usage=(30, 7))}
    for name, answer in cases.items():
        print(json.dumps({"token_ms": args.token_ms, **run_case(name, answer, args.requests)}), flush=True)


if __name__ == "__main__":
    main()
