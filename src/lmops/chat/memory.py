"""Conversation memory: what a model sees of a conversation that outgrows its context, by the model's ``memory``
setting (``ModelConfig.memory``).

- ``window``: the latest turns that fit (``LatestTurns``).
- ``summary``: the latest summary of the older turns (a system message), then the latest turns after it that fit.
  When those no longer all fit, the turns after the summary that fall outside the latest ``keep_share`` of the
  budget are folded, with the previous summary, into a new one by ``summary_model``; it is stored
  (``chat_summaries``) and sent in their place. The summary call is a request of its own (endpoint
  ``chat.summary``), admitted, routed, recorded and billed to the user like the answer. If it fails, the answer
  is still given, from the plain window (and the failure is logged).

Per answer this reads the latest summary (one index lookup) and the messages after it; a summary call reads
only the turns it folds. One call folds at most what fits the summary model's context: a longer backlog (an
imported conversation) is caught up over the next answers, without skipping any turn.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from lmops.chat.answer import admission, call_context
from lmops.chat.history import PAGE, Fit, LatestTurns, as_message, estimate_tokens, usable
from lmops.chat.identity import ChatUser
from lmops.chat.store import ChatStore, Row
from lmops.config import MemoryConfig
from lmops.protocol.errors import APIError, ClientClosed, UpstreamError
from lmops.serving.inner_calls import Usage, settle

if TYPE_CHECKING:
    from lmops.core import Core

log = logging.getLogger("lmops.chat")

SUMMARY_ENDPOINT = "chat.summary"  # the request records' endpoint of summary calls
SUMMARY_HEADING = "Summary of the earlier conversation: "
SUMMARY_PROMPT = ("You keep the memory of a conversation between a user and an assistant. Write a concise summary "
                  "of it: the facts, names, numbers, decisions and open questions that later answers may need. "
                  "Fold the summary so far (if any) and the new turns into one summary. Answer with the summary "
                  "only.")
MIN_SUMMARY_TOKENS = 16


@dataclass
class Window:
    messages: list[dict[str, Any]]  # what the model is sent
    summary: Row | None  # the summary among them (None: the plain window)


def summary_message(summary: Row) -> dict[str, Any]:
    return {"role": "system", "content": SUMMARY_HEADING + summary["content"]}


def marker(summary: Row | None) -> Row | None:
    """Where older turns were summarised, as the API shows it (``summary`` of a page of messages)."""
    if summary is None:
        return None
    return {k: summary[k] for k in ("object", "through_seq", "created_at", "model", "content")}


class ConversationMemory:
    """The strategy of each model, behind one call (``ChatService.history``)."""

    def __init__(self, core: "Core", store: ChatStore):
        self.core = core
        self.store = store
        self.turns = LatestTurns(store)

    async def window(self, user: ChatUser, http: Request, conversation_id: str, system_prompt: str | None,
                     new: list[dict[str, Any]], model: str, budget: int, before: int | None = None) -> Window:
        """The messages to send ``model`` for ``new``: system prompt, earlier messages (before seq ``before`` when
        given: regenerate and edit) within ``budget`` tokens, then ``new``."""
        memory = self.core.router.resolve(model).config.memory
        if memory.strategy == "window":
            return Window(await self.turns.window(conversation_id, system_prompt, new, budget, before), None)
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        fixed = sum(estimate_tokens(m["content"]) for m in (*head, *new))
        summary = await self.store.summary(conversation_id, before)
        fit = await self._fit(conversation_id, summary, budget - fixed, before)
        if fit.left_out:
            try:
                summary = await self._fold(user, http, conversation_id, model, memory, summary, budget, fixed,
                                           before)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the answer goes on without a new summary
                log.warning("the summary of conversation %s failed (%s): the model gets the latest turns only",
                            conversation_id, exc if isinstance(exc, APIError) else repr(exc),
                            exc_info=not isinstance(exc, APIError))
                return Window(await self.turns.window(conversation_id, system_prompt, new, budget, before), None)
            fit = await self._fit(conversation_id, summary, budget - fixed, before)
        shown = [summary_message(summary)] if summary else []
        return Window([*head, *shown, *(as_message(r) for r in fit.rows), *new], summary)

    async def _fit(self, conversation_id: str, summary: Row | None, left: int, before: int | None) -> Fit:
        """The latest turns after ``summary`` that fit ``left`` tokens with it."""
        if summary is None:
            return await self.turns.fit(conversation_id, left, before)
        cost = estimate_tokens(summary_message(summary)["content"])
        return await self.turns.fit(conversation_id, left - cost, before, summary["through_seq"])

    async def _fold(self, user: ChatUser, http: Request, conversation_id: str, model: str, memory: MemoryConfig,
                    previous: Row | None, budget: int, fixed: int, before: int | None) -> Row | None:
        """Fold the turns after ``previous`` that the latest ``keep_share`` of the budget leaves out into a new
        summary, stored; ``previous`` when there is nothing to fold."""
        after = previous["through_seq"] if previous else 0
        keep = int(budget * memory.keep_share) - fixed
        kept = await self.turns.fit(conversation_id, max(0, keep), before, after)
        cut = kept.rows[0]["seq"] if kept.rows else before
        name = memory.summary_model or model
        context = self.core.router.resolve(name).config.context_length
        room = budget - fixed - max(0, keep) - estimate_tokens(SUMMARY_HEADING)
        answer_tokens = max(MIN_SUMMARY_TOKENS, min(room, context // 2))
        so_far = f"Summary so far:\n{previous['content']}\n\n" if previous else ""
        left = context - answer_tokens - estimate_tokens(SUMMARY_PROMPT) - estimate_tokens(so_far) - 8
        turns, through = await self._backlog(conversation_id, after, cut, left)
        if not turns:
            return previous
        transcript = "\n\n".join(f"{'User' if r['role'] == 'user' else 'Assistant'}: {r['content']}" for r in turns)
        messages = [{"role": "system", "content": SUMMARY_PROMPT},
                    {"role": "user", "content": f"{so_far}New turns:\n{transcript}"}]
        text, prompt_tokens, completion_tokens = await self._call(user, http, name, messages, answer_tokens)
        return await self.store.add_summary(conversation_id, through, text, name, prompt_tokens, completion_tokens)

    async def _backlog(self, conversation_id: str, after: int, cut: int | None, left: int) -> tuple[list[Row], int]:
        """The usable turns after seq ``after`` (before ``cut``), oldest first, that fit ``left`` tokens, and the
        seq they run through. A first turn too long for the summary model alone is cut short."""
        turns: list[Row] = []
        through = after
        while True:
            rows = await self.store.following(conversation_id, through, cut, PAGE)
            for row in rows:
                if usable(row):
                    cost = estimate_tokens(row["content"]) + 2
                    if cost > left:
                        if turns:
                            return turns, through
                        row = {**row, "content": row["content"][: max(0, left - 6) * 3]}
                        cost = left
                    turns.append(row)
                    left -= cost
                through = row["seq"]
            if len(rows) < PAGE:
                return turns, through

    async def _call(self, user: ChatUser, http: Request, model: str, messages: list[dict[str, Any]],
                    max_tokens: int) -> tuple[str, int, int]:
        """Ask ``model`` for the summary, through the gateway's road; its text and usage."""
        inference = self.core.inference
        ctx = call_context(user, SUMMARY_ENDPOINT)
        body = {"model": model, "messages": messages, "max_tokens": max_tokens}
        batches = await inference.open_chat_stream(body, ctx, admission(self.core, user, http))
        parts: list[str] = []
        usage: Any = None
        delivered = 0
        failure: APIError | None = None
        try:
            async for batch in batches:
                for chunk in batch:
                    usage = chunk.get("usage") or usage
                    choices = chunk.get("choices")
                    text = (choices[0].get("delta") or {}).get("content") if choices else None
                    if text:
                        parts.append(text)
                        delivered += 1
        except APIError as exc:
            failure = exc
        except asyncio.CancelledError:
            failure = ClientClosed()
            raise
        except Exception as exc:  # noqa: BLE001 - recorded as a failed call; the caller falls back
            failure = UpstreamError(f"The summary's stream failed: {type(exc).__name__}")
        finally:
            await batches.aclose()  # type: ignore[attr-defined]
            settle(inference, ctx, usage, delivered, messages, failure, Usage())
        text = "".join(parts).strip()
        if failure is not None:
            raise failure
        if not text:
            raise UpstreamError("The summary model answered with no text.")
        return text, ctx.prompt_tokens, ctx.completion_tokens
