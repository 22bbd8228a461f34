"""One generation of the embedded llama.cpp engine, as both of its runners see it: the request's side (``Job``,
shared between the event loop and the model thread) and the tokens' side (``Output``: text, stops, logprobs).
"""

from __future__ import annotations

import asyncio
import codecs
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmops.engines.text_stops import StopMatcher
from lmops.engines.token_logprobs import TokenLogprob, token_logprob


@dataclass(frozen=True)
class Generated:
    """What a generation produced: its text, why it ended, how many tokens, and their log-probabilities (with
    those of the prompt's tokens before them, when the request echoes the prompt)."""

    text: str
    finish: str
    tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Job:
    """One generation, shared between the event loop and the model thread."""

    prompt: list[int]
    max_tokens: int
    params: dict[str, Any]
    stops: list[str] | None
    grammar: Any
    seed: int | None
    loop: asyncio.AbstractEventLoop
    top_logprobs: int | None = None  # None: no log-probabilities; N: the chosen token's and N alternatives
    echo: str = ""  # the prompt's text, when the completion echoes it
    score_from: int | None = None  # echo with logprobs: the first prompt token to score (1 skips a BOS token)
    tool_call: bool = False  # the grammar makes the output a function call (tool_choice demanded one)
    bias: dict[int, float] | None = None  # logit_bias by token id
    stream: asyncio.Queue[tuple[str, Any]] | None = None
    result: asyncio.Future[Generated] | None = None
    submitted: bool = False  # handed to the model thread, which frees its place in the queue when done
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, value: Any) -> None:
        if self.stream is not None:
            self.loop.call_soon_threadsafe(self.stream.put_nowait, (kind, value))

    def finish(self, generated: Generated) -> None:
        if self.stream is not None:
            self.emit("done", (generated.finish, generated.tokens))
        elif self.result is not None:
            self.loop.call_soon_threadsafe(_set_result, self.result, generated)

    def fail(self, exc: BaseException) -> None:
        if self.stream is not None:
            self.emit("error", exc)
        elif self.result is not None:
            self.loop.call_soon_threadsafe(_set_exception, self.result, exc)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class Output:
    """The tokens of one generation becoming text: end of generation, stop sequences, max_tokens, log-probabilities,
    each piece of text sent to the job as it is made. Runs on the model thread."""

    def __init__(self, job: Job, llm: Any, prompt_entries: list[TokenLogprob] | None = None):
        import llama_cpp

        self.job = job
        self._llm = llm
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._vocab = llm._model.vocab
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = StopMatcher(job.stops)
        self._parts: list[str] = []
        # Log-probabilities of the tokens whose text has not left yet (held by the decoder or the stop matcher):
        # they go out with the text they make, and are dropped with a stop sequence's.
        self._held: list[TokenLogprob] = []
        self._sent: list[TokenLogprob] = list(prompt_entries or [])
        self.tokens = 0
        self.finish = "length"

    def piece(self, token: int) -> bytes:
        """A token's bytes as logprobs show it (special tokens by name)."""
        return bytes(self._llm.detokenize([token], special=True))

    def add(self, token: int, logits: Callable[[], np.ndarray]) -> bool:
        """Takes a sampled token (``logits``: those that chose it); True when the generation is over."""
        if self._is_eog(self._vocab, token):
            self.finish = "stop"
            return True
        self.tokens += 1
        if self.job.top_logprobs is not None:
            self._held.append(token_logprob(logits(), token, self.job.top_logprobs, self.piece))
        text = self._stops.feed(self._decoder.decode(self._llm.detokenize([token])))
        if text:
            self._send(text)
        if self._stops.stopped:
            self.finish = "stop"
            return True
        return self.tokens >= self.job.max_tokens

    def _send(self, text: str) -> None:
        self._parts.append(text)
        self.job.emit("text", (text, self._held))
        self._sent += self._held
        self._held = []

    def close(self, finish: str | None = None) -> Generated:
        """What was generated (``finish`` overrides why it ended: ``cancelled``)."""
        if not self._stops.stopped:
            # Bytes still held by the decoder begin a character the model never finished (max_tokens cut it):
            # left out, as llama-cpp-python does, rather than sent as U+FFFD.
            tail = self._stops.flush()
            if tail:
                self._send(tail)
        return Generated("".join(self._parts), finish or self.finish, self.tokens, self._sent)
