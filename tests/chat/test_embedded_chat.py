"""The chat API in laptop mode on the embedded llama.cpp model: an answer streams, and a stop frees the model at
once (its generation checks a cancel flag per token)."""

from __future__ import annotations

import threading
import time

from .conftest import sign_in, sse


def test_stop_ends_the_embedded_generation_and_keeps_what_it_said(embedded):
    browser = sign_in(embedded.url, "", "")
    conv = browser.ok("POST", "/api/chat/conversations",
                      json={"model": "smollm2", "params": {"max_tokens": 200, "temperature": 0}})
    _, final = browser.ask(conv["id"], "Say hello.")
    assert final["status"] == "complete" and final["messages"][1]["content"]
    assert final["messages"][1]["completion_tokens"] > 0 and final["messages"][1]["prompt_tokens"] > 0

    path = f"/api/chat/conversations/{conv['id']}"
    lines: list[str] = []
    begun = threading.Event()

    def ask() -> None:
        with browser.http.stream("POST", f"{path}/messages", headers={"x-csrf-token": browser.csrf}, timeout=60,
                                 json={"content": "Write a very long story about a dragon, in many chapters."}) as resp:
            for line in resp.iter_lines():
                lines.append(line)
                if sum('"content":' in x for x in lines) >= 5:
                    begun.set()

    thread = threading.Thread(target=ask)
    thread.start()
    assert begun.wait(30)
    started = time.monotonic()
    assert browser.ok("POST", f"{path}/stop")["stopped"] is True
    thread.join(30)
    assert time.monotonic() - started < 5
    chunks, final = sse("\n".join(lines))
    answer = final["messages"][-1]
    assert answer["status"] == "stopped" and answer["content"]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert answer["content"] == streamed
    assert 0 < answer["completion_tokens"] < 200
    _, again = browser.ask(conv["id"], "Thanks.")  # the model is free again
    assert again["status"] == "complete"
