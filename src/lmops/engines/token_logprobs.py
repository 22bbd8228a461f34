"""Token log-probabilities and logit biases for the embedded llama.cpp engine, in the OpenAI wire format.

Log-probabilities are those of the model's own next-token distribution (the log-softmax of its logits, before
temperature, penalties, grammar or ``logit_bias`` shape the sampling), as vLLM reports them by default. The
chosen token's entry is always there, whatever was sampled; ``top`` lists the most likely alternatives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its bytes, its log-probability, and the ``top`` most likely tokens at its place."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...]


def token_logprob(logits: np.ndarray, token: int, top_n: int, token_bytes: Callable[[int], bytes]) -> TokenLogprob:
    """The entry for ``token`` sampled from ``logits`` (one row: a logit per vocabulary entry)."""
    row = logits.astype(np.float64, copy=False)
    peak = float(row.max())
    log_total = peak + float(np.log(np.exp(row - peak).sum()))
    top: tuple[tuple[bytes, float], ...] = ()
    if top_n > 0:
        best = np.argpartition(row, -top_n)[-top_n:]
        best = best[np.argsort(-row[best], kind="stable")]
        top = tuple((token_bytes(int(t)), float(row[t]) - log_total) for t in best)
    return TokenLogprob(token_bytes(token), float(row[token]) - log_total, top)


def _text(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (or of one stream chunk: the entries of its tokens)."""
    def item(token: bytes, logprob: float) -> dict[str, Any]:
        return {"token": _text(token), "logprob": logprob, "bytes": list(token)}

    return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                        for e in entries],
            "refusal": None}


def completion_logprobs(entries: Sequence[TokenLogprob], text_offset: int = 0) -> dict[str, Any]:
    """``choices[].logprobs`` of a text completion (legacy format); ``text_offset`` is where the first token's
    text starts in the choice's text. Each ``top_logprobs`` map holds the alternatives and the chosen token."""
    offsets, at = [], text_offset
    for e in entries:
        offsets.append(at)
        at += len(_text(e.token))
    return {"tokens": [_text(e.token) for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{**{_text(t): lp for t, lp in e.top}, _text(e.token): e.logprob} for e in entries],
            "text_offset": offsets}


def parse_logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """``logit_bias`` with token ids as ints; a token outside the vocabulary is a ValueError naming it."""
    parsed = {int(token): float(value) for token, value in (bias or {}).items()}
    outside = sorted(t for t in parsed if t >= vocab_size)
    if outside:
        raise ValueError(f"logit_bias names token ids this model does not have ({', '.join(map(str, outside[:5]))}); "
                         f"its vocabulary has {vocab_size} tokens (ids 0 to {vocab_size - 1})")
    return parsed


def bias_processor(bias: dict[int, float]) -> Callable[[Any, np.ndarray], np.ndarray]:
    """A llama-cpp-python logits processor that adds each bias to its token's logit (-100 or 100: never or
    always, in practice), as the OpenAI API defines ``logit_bias``."""
    ids = np.fromiter(bias.keys(), dtype=np.intp, count=len(bias))
    values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))

    def apply(_input_ids: Any, scores: np.ndarray) -> np.ndarray:
        scores[ids] += values
        return scores

    return apply
