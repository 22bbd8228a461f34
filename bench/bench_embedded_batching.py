"""Continuous batching in the embedded engine (issue 24): output-token throughput at 1 and N concurrent requests.

Everything runs in this process, side by side, in interleaved rounds (the order rotates each round) so that the
load of other processes on a shared machine hits every configuration alike:

- ``old``: the one-at-a-time path (``batching: false``, llama-cpp-python's ``Llama.generate``), 1 request;
- ``engine c=1`` / ``engine c=N``: the batched engine (``parallel: N``), 1 and N concurrent requests through the
  engine's own API (``EmbeddedLlamaEngine.chat_completion``: job building, chat template, sampler chain, stop
  and logprob bookkeeping, event-loop hand-offs; no HTTP, which bench/embedded_efficiency.py measures);
- ``bare c=1`` / ``bare c=N``: the reference, a bare llama.cpp multi-sequence decode loop on the same library
  (llama-cpp-python's low-level API): the same prompt tokens prefilled in one batch, then one ``llama_decode``
  per step over all sequences, greedy sampling; no Python per token beyond the batch and the sampler call.

Each request: a chat prompt of its own (the same but for a number, the same length in tokens; both engines
reuse only the chat template's system prompt from their KV cache, and so does the bare loop), ``max_tokens`` M,
temperature 0, the end-of-turn token banned (logit_bias -100) so that every request produces exactly M tokens.
tokens/s = output tokens / wall time of the whole wave (prefill included). Printed: each configuration's median
and range over the rounds, and the ratios, computed per round (paired) then summarised as median [min-max],
which is what the targets are judged on.

    /work/main/.venv/bin/python bench/bench_embedded_batching.py --rounds 3 --concurrency 16 --max-tokens 64 \
        --threads 1 --threads-batch 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from harness import machine_line

from lmops.config import ModelConfig
from lmops.engines.embedded_llamacpp import EmbeddedLlamaEngine

PROMPT = "Story {:06d}: write a long story about a lighthouse keeper and the ships she guides home."
EOT = 2  # SmolLM2's end of turn
WAVES = itertools.count()  # each request's prompt is new: no side decodes less of it than the others


def body(max_tokens: int, number: int) -> dict[str, Any]:
    return {"model": "bench", "messages": [{"role": "user", "content": PROMPT.format(number)}],
            "max_tokens": max_tokens, "temperature": 0, "logit_bias": {str(EOT): -100}}


async def engine_wave(engine: EmbeddedLlamaEngine, n: int, max_tokens: int) -> float:
    """Output tokens/s of n concurrent requests."""
    wave = next(WAVES) * 1000
    started = time.perf_counter()
    answers = await asyncio.gather(*(engine.chat_completion(body(max_tokens, wave + i)) for i in range(n)))
    seconds = time.perf_counter() - started
    return sum(a["usage"]["completion_tokens"] for a in answers) / seconds


class BareLoop:
    """The reference: llama.cpp's multi-sequence decode with nothing around it."""

    def __init__(self, engine: EmbeddedLlamaEngine, parallel: int, context: int, threads: int, threads_batch: int):
        import llama_cpp
        from llama_cpp import _internals

        self.lib = llama_cpp
        self.engine = engine
        llm = engine._llm
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx, params.n_seq_max, params.kv_unified = parallel * context, parallel, False
        params.n_batch = params.n_ubatch = 512
        params.n_threads, params.n_threads_batch = threads, threads_batch
        self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self.samplers = [llama_cpp.llama_sampler_init_greedy() for _ in range(parallel)]
        # The prompts' common prefix (the chat template's system prompt) is decoded once into every sequence and
        # kept, as the engine keeps it.
        first, second = self.prompt(0), self.prompt(1)
        self.shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
        for seq in range(parallel):
            for pos in range(self.shared):
                self.add(pos, first[pos], pos, seq, False)
            self.batch.n_tokens = self.shared
            if llama_cpp.llama_decode(self.ctx.ctx, self.batch) != 0:
                raise RuntimeError("llama_decode failed")

    def add(self, row: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[row], b.pos[row], b.n_seq_id[row], b.logits[row] = token, pos, 1, logits
        b.seq_id[row][0] = seq

    def prompt(self, number: int) -> list[int]:
        text = self.engine._formatter(messages=body(1, number)["messages"]).prompt
        return list(self.engine._llm.tokenize(text.encode(), add_bos=True, special=True))

    def wave(self, n: int, max_tokens: int) -> float:
        lib, ctx, batch = self.lib, self.ctx.ctx, self.batch
        wave = next(WAVES) * 1000
        prompts = [self.prompt(wave + seq) for seq in range(n)]
        assert len({len(p) for p in prompts}) == 1, "the prompts differ in length"
        prompt = prompts[0]
        for seq in range(n):
            lib.llama_memory_seq_rm(self.ctx.memory, seq, self.shared, -1)
        started = time.perf_counter()
        cells = [(seq, pos) for seq in range(n) for pos in range(self.shared, len(prompt) - 1)]
        for start in range(0, len(cells), 512):  # the prompts but their last tokens, 512 a batch
            for row, (seq, pos) in enumerate(cells[start:start + 512]):
                self.add(row, prompts[seq][pos], pos, seq, False)
            batch.n_tokens = len(cells[start:start + 512])
            if lib.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        for seq in range(n):  # then their last tokens, with logits, in the first step
            self.add(seq, prompts[seq][-1], len(prompt) - 1, seq, True)
        batch.n_tokens = n
        last = list(range(n))
        produced = 0
        for step in range(max_tokens):
            if lib.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            tokens = [lib.llama_sampler_sample(self.samplers[seq], ctx, last[seq]) for seq in range(n)]
            produced += n
            if step == max_tokens - 1:
                break
            for seq, token in enumerate(tokens):
                self.add(seq, token, len(prompt) + step, seq, True)
            batch.n_tokens = n
            last = list(range(n))
        return produced / (time.perf_counter() - started)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--context", type=int, default=512, help="context per slot")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--threads-batch", type=int, default=None, help="default: --threads, as the engine")
    ap.add_argument("--json", help="write the per-round figures here")
    args = ap.parse_args()
    n, m = args.concurrency, args.max_tokens
    tb = args.threads_batch or args.threads

    def config(**extra: Any) -> ModelConfig:
        return ModelConfig(name="bench", engine="embedded", context_length=args.context, threads=args.threads,
                           threads_batch=tb, queue_size=max(16, n), **extra)

    old = EmbeddedLlamaEngine(config(batching=False))
    new = EmbeddedLlamaEngine(config(parallel=n))
    for engine in (old, new):
        await engine.start()
    bare = BareLoop(new, n, args.context, args.threads, tb)
    runs: dict[str, Callable[[], Awaitable[float]]] = {
        "old c=1": lambda: engine_wave(old, 1, m),
        "engine c=1": lambda: engine_wave(new, 1, m),
        f"engine c={n}": lambda: engine_wave(new, n, m),
        "bare c=1": lambda: asyncio.to_thread(bare.wave, 1, m),
        f"bare c={n}": lambda: asyncio.to_thread(bare.wave, n, m),
    }
    await engine_wave(new, 2, 4)  # warm-up
    await engine_wave(old, 1, 4)
    bare.wave(2, 4)
    figures: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            figures[name].append(await runs[name]())
        print(f"round {r + 1}: " + ", ".join(f"{k} {figures[k][-1]:.1f}" for k in names), flush=True)
    ratios = {
        f"engine c={n} / engine c=1 (target >= 2.5)": (f"engine c={n}", "engine c=1"),
        f"engine c={n} / bare c={n} (target >= 0.9)": (f"engine c={n}", f"bare c={n}"),
        "engine c=1 / old c=1 (target >= 0.95)": ("engine c=1", "old c=1"),
        f"bare c={n} / bare c=1 (the physical gain)": (f"bare c={n}", "bare c=1"),
        "engine c=1 / bare c=1": ("engine c=1", "bare c=1"),
    }
    print(f"\n{machine_line()}\nthreads {args.threads}, threads_batch {tb}, {m} tokens per request, "
          f"{args.rounds} rounds; tokens/s median [min-max]:")
    for name in names:
        print(f"  {name:14} {summary(figures[name])}")
    print("paired ratios, median [min-max]:")
    paired = {}
    for label, (a, b) in ratios.items():
        paired[label] = [x / y for x, y in zip(figures[a], figures[b], strict=True)]
        values = paired[label]
        print(f"  {label:45} {statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "tokens_per_s": figures, "ratios": paired}, fh, indent=1)
    for engine in (old, new):
        await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
