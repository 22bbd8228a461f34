"""The chat API's costs over the gateway's (issue 23's targets), side by side in one run.

1. Time to first token: the same question to the same model (the fake upstream, answering at once) as a streamed
   ``/v1/chat/completions`` and as a chat answer (``POST /api/chat/conversations/{id}/messages``, a fresh
   conversation each time, so that both send the same prompt), pairs interleaved. Target: chat ≤ gateway + 2 ms.
2. Opening a 1,000-message conversation as the UI does (the conversation, then its latest page of 50 messages):
   time from request to full response on loopback (an upper bound of the server's time). Target: ≤ 100 ms.

Gateway and upstream run in threads of this process, on SQLite, laptop mode (access control off).

    python bench/bench_chat.py --pairs 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from lmops.app import create_app
from lmops.testing.fake_openai import FakeOpenAI
from lmops.testing.server import ServerThread
from lmops.testing.settings import make_settings

QUESTION = "Name three colours of foxes."


def first_token_ms(client: httpx.Client, url: str, body: dict, headers: dict[str, str]) -> float:
    """Milliseconds from sending the request to the first event with answer text."""
    start = time.perf_counter()
    with client.stream("POST", url, json=body, headers=headers) as resp:
        resp.raise_for_status()
        first = None
        for line in resp.iter_lines():
            if first is None and line.startswith("data: {") and '"content"' in line:
                first = (time.perf_counter() - start) * 1000.0
        assert first is not None, "no answer text"
    return first


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument("--opens", type=int, default=30)
    args = p.parse_args()
    upstream = ServerThread(FakeOpenAI()).start()
    tmp = Path(tempfile.mkdtemp(prefix="lmops-bench-chat-"))
    settings = make_settings(tmp, [{"name": "fake", "engine": "openai", "replicas": [f"{upstream.url}/v1"]}],
                             server={"log_level": "warning"})
    gateway = ServerThread(create_app(settings)).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            csrf = client.post("/api/chat/session", json={"username": "local", "password": ""}).json()["csrf_token"]
            headers = {"x-csrf-token": csrf}
            gateway_body = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
            direct, chat = [], []
            for i in range(args.pairs + 5):  # the first pairs warm both paths up
                conversation = client.post("/api/chat/conversations", json={"model": "fake"},
                                           headers=headers).json()["id"]
                pair = (first_token_ms(client, "/v1/chat/completions", gateway_body, {}),
                        first_token_ms(client, f"/api/chat/conversations/{conversation}/messages",
                                       {"content": QUESTION}, headers))
                if i >= 5:
                    direct.append(pair[0])
                    chat.append(pair[1])
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "text " * 30,
                         "timestamp": 1_700_000_000 + i} for i in range(1000)]
            imported = client.post("/api/chat/import", headers=headers, json=[
                {"id": "long", "title": "long", "chat": {"messages": messages}}]).json()
            long_id = imported["conversations"][0]
            opens = []
            for _ in range(args.opens):
                start = time.perf_counter()
                client.get(f"/api/chat/conversations/{long_id}").raise_for_status()
                page = client.get(f"/api/chat/conversations/{long_id}/messages", params={"limit": 50})
                page.raise_for_status()
                opens.append((time.perf_counter() - start) * 1000.0)
            assert len(page.json()["data"]) == 50
    finally:
        gateway.stop()
        upstream.stop()
    d, c = statistics.median(direct), statistics.median(chat)
    print(json.dumps({"pairs": args.pairs, "gateway_ttft_ms": round(d, 2), "chat_ttft_ms": round(c, 2),
                      "chat_minus_gateway_ms": round(c - d, 2), "open_1000_messages_ms": round(
                          statistics.median(opens), 2), "open_p90_ms": round(sorted(opens)[int(len(opens) * 0.9)], 2)}))


if __name__ == "__main__":
    main()
