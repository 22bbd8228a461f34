"""What the model sees of a conversation: the system prompt and a window of the latest messages.

``LatestTurns`` takes messages newest first while they fit a token budget (estimated: a token per three
characters plus four per message, on the safe side for English text with BPE tokenizers). A strategy that
summarises older turns (conversation memory) is another ``History``: the seam is ``ChatService.history``.
"""

from __future__ import annotations

from typing import Any, Protocol

from lmops.chat.store import ChatStore

PAGE = 100  # messages read per query while filling the window
USABLE = ("complete", "stopped")  # failed answers are not sent back to the model


def estimate_tokens(text: str) -> int:
    return -(-len(text) // 3) + 4


class History(Protocol):
    async def window(self, conversation_id: str, system_prompt: str | None, new: list[dict[str, Any]],
                     budget: int, before: int | None = None) -> list[dict[str, Any]]:
        """The messages to send: the system prompt, earlier messages (those before seq ``before`` when given) that
        fit ``budget`` tokens with it and with ``new``, then ``new``."""
        ...


class LatestTurns:
    def __init__(self, store: ChatStore):
        self.store = store

    async def window(self, conversation_id: str, system_prompt: str | None, new: list[dict[str, Any]],
                     budget: int, before: int | None = None) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        left = budget - sum(estimate_tokens(m["content"]) for m in (*head, *new))
        earlier: list[dict[str, Any]] = []
        cursor = before
        while left > 0:
            rows = await self.store.latest(conversation_id, PAGE, cursor)
            for row in rows:
                if row["status"] not in USABLE or not row["content"] or row["role"] not in ("user", "assistant"):
                    continue
                cost = estimate_tokens(row["content"])
                if cost > left:
                    left = 0
                    break
                left -= cost
                earlier.append({"role": row["role"], "content": row["content"]})
            if len(rows) < PAGE or left <= 0:
                break
            cursor = rows[-1]["seq"]
        while earlier and earlier[-1]["role"] != "user":  # the window starts with a question (chat templates)
            earlier.pop()
        return [*head, *reversed(earlier), *new]
