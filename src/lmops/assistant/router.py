"""Read the function model's streamed answer just far enough to know what to do.

The function model is asked, with the tools and ``tool_choice`` demanding a call, which tool answers the user's
latest message. Its stream is read delta by delta: a ``tool_calls`` delta naming ``none`` means "answer directly",
at once; text content (no ``tool_calls`` delta) for ``detect_tokens`` streamed tokens means the model is answering
by itself, which the default model does instead, at once, without waiting for the rest; a tool call is read to its
end (its arguments arrive in pieces, by ``index``). Only the first call of an answer is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lmops.assistant.tools.base import NONE_TOOL
from lmops.engines.base import Chunks


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str

    def message(self) -> dict[str, Any]:
        """The assistant message that made this call (OpenAI wire format)."""
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}]}


@dataclass
class Decision:
    """``call``: the tool to run, or None to answer with the default model; ``why``: "tool", "none" (the model
    called ``none``), "text" (it answered in text) or "nothing" (its stream ended without either)."""

    call: ToolCall | None
    why: str
    tokens: int = 0  # streamed chunks with output read
    usage: dict[str, Any] | None = None  # the stream's usage chunk, when it was read to its end
    ended: bool = False  # the stream was read to its end


@dataclass
class _Calls:
    parts: dict[int, dict[str, str]] = field(default_factory=dict)

    def add(self, deltas: list[Any]) -> None:
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index", 0)
            entry = self.parts.setdefault(index if isinstance(index, int) else 0,
                                          {"id": "", "name": "", "arguments": ""})
            if isinstance(delta.get("id"), str) and delta["id"]:
                entry["id"] = delta["id"]
            function = delta.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str) and function["name"] and not entry["name"]:
                    entry["name"] = function["name"]  # sent whole, in the call's first delta
                if isinstance(function.get("arguments"), str):
                    entry["arguments"] += function["arguments"]

    def first(self) -> dict[str, str] | None:
        return self.parts[min(self.parts)] if self.parts else None


async def decide(batches: AsyncIterator[Chunks], detect_tokens: int) -> Decision:
    """What the function model's stream asks for (the stream is left open: the caller closes it)."""
    calls = _Calls()
    tokens = text_tokens = 0
    usage: dict[str, Any] | None = None
    async for batch in batches:
        for chunk in batch:
            if chunk.get("usage"):
                usage = chunk["usage"]
            choices = chunk.get("choices")
            if not choices:
                continue
            delta = choices[0].get("delta") or {}
            tool_calls = delta.get("tool_calls")
            content = delta.get("content")
            if tool_calls or content:
                tokens += 1
            if tool_calls:
                calls.add(tool_calls)
            first = calls.first()
            if first is not None:
                if first["name"] == NONE_TOOL:
                    return Decision(None, "none", tokens)
            elif content:
                text_tokens += 1
                if text_tokens >= detect_tokens:
                    return Decision(None, "text", tokens)
    first = calls.first()
    if first is None or not first["name"]:
        return Decision(None, "text" if text_tokens else "nothing", tokens, usage, ended=True)
    if first["name"] == NONE_TOOL:
        return Decision(None, "none", tokens, usage, ended=True)
    return Decision(ToolCall(first["id"] or "call_0", first["name"], first["arguments"]), "tool", tokens, usage,
                    ended=True)
