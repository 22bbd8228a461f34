"""What the model sees of a conversation: the system prompt and a window of the latest messages.

``LatestTurns`` takes messages newest first while they fit a token budget (estimated: a token per three
characters plus four per message, on the safe side for English text with BPE tokenizers). The summarising
strategy (``chat/memory.py``) sends a summary of the older turns before such a window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmops.chat.store import ChatStore, Row

PAGE = 100  # messages read per query while filling the window
USABLE = ("complete", "stopped")  # failed answers are not sent back to the model


def estimate_tokens(text: str) -> int:
    return -(-len(text) // 3) + 4


def usable(row: Row) -> bool:
    """Whether a stored message goes to the model: a question or an answer, with text, that did not fail."""
    return row["status"] in USABLE and bool(row["content"]) and row["role"] in ("user", "assistant")


def as_message(row: Row) -> dict[str, Any]:
    return {"role": row["role"], "content": row["content"]}


@dataclass
class Fit:
    rows: list[Row]  # the latest usable messages that fit, oldest first; the first is a question
    left_out: bool  # whether older usable messages (in the range read) did not fit


class LatestTurns:
    def __init__(self, store: ChatStore):
        self.store = store

    async def window(self, conversation_id: str, system_prompt: str | None, new: list[dict[str, Any]],
                     budget: int, before: int | None = None) -> list[dict[str, Any]]:
        """The messages to send: the system prompt, earlier messages (those before seq ``before`` when given) that
        fit ``budget`` tokens with it and with ``new``, then ``new``."""
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        left = budget - sum(estimate_tokens(m["content"]) for m in (*head, *new))
        fit = await self.fit(conversation_id, left, before)
        return [*head, *(as_message(r) for r in fit.rows), *new]

    async def fit(self, conversation_id: str, left: int, before: int | None = None,
                  after: int | None = None) -> Fit:
        """The latest usable messages between seqs ``after`` and ``before`` that fit ``left`` tokens."""
        earlier: list[Row] = []  # newest first
        left_out = False
        cursor = before
        while not left_out:
            rows = await self.store.latest(conversation_id, PAGE, cursor, after)
            for row in rows:
                if not usable(row):
                    continue
                cost = estimate_tokens(row["content"])
                if cost > left:
                    left_out = True
                    break
                left -= cost
                earlier.append(row)
            if len(rows) < PAGE:
                break
            cursor = rows[-1]["seq"]
        while earlier and earlier[-1]["role"] != "user":  # the window starts with a question (chat templates)
            earlier.pop()
            left_out = True
        return Fit(list(reversed(earlier)), left_out)
