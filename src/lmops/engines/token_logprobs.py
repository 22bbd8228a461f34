"""Token log-probabilities and logit biases for the embedded llama.cpp engine, in the OpenAI wire format.

Log-probabilities are those of the model's own next-token distribution (the log-softmax of its logits, before
temperature, penalties, grammar or ``logit_bias`` shape the sampling), as vLLM reports them by default. The
chosen token's entry is always there, whatever was sampled; ``top`` lists the most likely alternatives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TokenLogprob:
    """One token: its bytes, its log-probability, and the ``top`` most likely tokens at its place. A prompt's
    first token has neither (None): nothing before it predicts it."""

    token: bytes
    logprob: float | None
    top: tuple[tuple[bytes, float], ...] = ()


def token_logprob(logits: np.ndarray, token: int, top_n: int, token_bytes: Callable[[int], bytes]) -> TokenLogprob:
    """The entry for ``token`` sampled from ``logits`` (one float32 row: a logit per vocabulary entry).

    Runs once per generated token on the model thread, so it stays in float32 (numpy's float64 ``exp`` was
    seven times slower here) and looks for the most likely tokens among the few near the peak first."""
    peak = logits.max()
    log_total = float(peak) + float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))
    top: tuple[tuple[bytes, float], ...] = ()
    if top_n > 0:
        best = _most_likely(logits, float(peak), top_n)
        top = tuple((token_bytes(int(t)), float(logits[t]) - log_total) for t in best)
    return TokenLogprob(token_bytes(token), float(logits[token]) - log_total, top)


def _most_likely(logits: np.ndarray, peak: float, n: int) -> np.ndarray:
    """The ids of the ``n`` largest logits, largest first.

    Once at least ``n`` tokens lie within some distance of the peak, the top ``n`` are among them; a model's
    distribution has few tokens near its peak, so selecting within those beats partitioning the whole
    vocabulary (~0.4 ms for 49k entries)."""
    pool = np.arange(len(logits))
    for distance in (8.0, 16.0, 32.0):
        near = np.flatnonzero(logits >= peak - distance)
        if len(near) >= n:
            pool = near
            break
    if len(pool) > n:
        pool = pool[np.argpartition(logits[pool], -n)[-n:]]
    return pool[np.argsort(-logits[pool], kind="stable")]


def _text(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (or of one stream chunk: the entries of its tokens)."""
    def item(token: bytes, logprob: float | None) -> dict[str, Any]:
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
            "top_logprobs": [None if e.logprob is None else {**{_text(t): lp for t, lp in e.top},
                                                             _text(e.token): e.logprob} for e in entries],
            "text_offset": offsets}


def parse_logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """``logit_bias`` with token ids as ints; a token outside the vocabulary is a ValueError naming it."""
    parsed = {int(token): float(value) for token, value in (bias or {}).items()}
    check_vocabulary(parsed, vocab_size, "logit_bias")
    return parsed


def check_vocabulary(tokens: Iterable[int], vocab_size: int, what: str) -> None:
    """A ValueError naming the token ids (of ``what``) that lie outside the model's vocabulary, if any."""
    outside = sorted({t for t in tokens if t >= vocab_size})
    if outside:
        raise ValueError(f"{what} names token ids this model does not have ({', '.join(map(str, outside[:5]))}); "
                         f"its vocabulary has {vocab_size} tokens (ids 0 to {vocab_size - 1})")


def bias_processor(bias: dict[int, float]) -> Callable[[Any, np.ndarray], np.ndarray]:
    """A llama-cpp-python logits processor that adds each bias to its token's logit (-100 or 100: never or
    always, in practice), as the OpenAI API defines ``logit_bias``."""
    ids = np.fromiter(bias.keys(), dtype=np.intp, count=len(bias))
    values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))

    def apply(_input_ids: Any, scores: np.ndarray) -> np.ndarray:
        scores[ids] += values
        return scores

    return apply
