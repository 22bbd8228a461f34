"""The log-probabilities of a prompt's own tokens: what a completion with ``echo`` and ``logprobs`` reports.

This is how text is scored (evaluation harnesses ask for it with ``max_tokens`` 0 or 1): each prompt token's
log-probability under the model's distribution given the tokens before it, as OpenAI's legacy completions and
vLLM report them. llama-cpp-python keeps the logits of every position only for a model loaded with
``logits_all``, which would make every generation pay for them; here one prompt's positions are decoded with
their logits kept, and the next generation reuses that prompt from the context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lmops.engines.token_logprobs import TokenLogprob, token_logprob

# Positions decoded together. llama.cpp keeps an output buffer of a vocabulary's floats for each position whose
# logits a batch keeps, and never shrinks it: a whole 512-token batch would hold 100 MB for this model's 49k
# tokens (300 MB for a 150k vocabulary), where 64 positions hold an eighth of that.
CHUNK = 64


def score_prompt(llm: Any, tokens: list[int], shown_from: int, top_n: int,
                 token_bytes: Callable[[int], bytes]) -> list[TokenLogprob]:
    """The entries of ``tokens[shown_from:]`` (``shown_from`` 1 skips a BOS token the text does not hold).

    Runs on the model thread. Leaves ``llm``'s context holding the whole prompt; its sampling state is left for
    ``generate`` to set up, which re-evaluates the last prompt token and reuses the rest.
    """
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)  # reset() only forgets the tokens; the cache must not hold them either
    n_vocab = llm.n_vocab()
    entries = [TokenLogprob(token_bytes(tokens[0]), None)] if shown_from == 0 else []
    step = min(CHUNK, llm.n_batch)
    for start in range(0, len(tokens), step):
        part = tokens[start:start + step]
        llm._batch.set_batch(batch=part, n_past=start, logits_all=True)
        llm._ctx.decode(llm._batch)
        llm.input_ids[start:start + len(part)] = part
        llm.n_tokens = start + len(part)
        for row in range(len(part)):
            predicted = start + row + 1  # the logits at one position are the next token's distribution
            if predicted < len(tokens):
                logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(row), shape=(n_vocab,))
                entries.append(token_logprob(logits, tokens[predicted], top_n, token_bytes))
    return entries
