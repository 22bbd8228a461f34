"""What the assistant adds to its answers, and takes out of the history before a model sees it.

An answer built on a tool's result ends with a source line in a fixed format, ``SOURCE_PREFIX`` on a line of its
own, that no model is asked to write. Before a conversation reaches the default model, every earlier assistant
message loses its source lines and its image links (markdown images, generated or not), so that the model never
learns to write them itself: sources are the tools' to give, images the image tools'.
"""

from __future__ import annotations

import re
from typing import Any

SOURCE_PREFIX = "\u2014 Source: "  # "— Source: " on a line of its own, after a blank line
_SOURCE_LINE = re.compile(r"\n*^\u2014 Source: [^\n]*$", re.MULTILINE)
_IMAGE_LINK = re.compile(r"!\[[^\]\n]*\]\([^)\n]*\)")


def with_source(text: str, source: str | None) -> str:
    """``text`` followed by its source line (nothing added when there is no source)."""
    if not source:
        return text
    return f"{text.rstrip()}\n\n{source_line(source)}"


def source_line(source: str) -> str:
    return SOURCE_PREFIX + " ".join(source.split())  # one line, whatever the tool said


def clean_text(text: str) -> str:
    """An assistant message's text without source lines or image links."""
    text = _IMAGE_LINK.sub("", text)
    return _SOURCE_LINE.sub("", text).strip()


def clean_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with every assistant message cleaned (``clean_text``); other messages are left as they are."""
    cleaned: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, str):
                message = {**message, "content": clean_text(content)}
            elif isinstance(content, list):
                message = {**message, "content": [
                    {**part, "text": clean_text(part["text"])} if part.get("type") == "text"
                    and isinstance(part.get("text"), str) else part for part in content]}
        cleaned.append(message)
    return cleaned


def latest_user_message(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((m for m in reversed(messages) if m.get("role") == "user"), None)


def tool_context(tool: str, result: str) -> str:
    """What the default model is told about a tool's result (a system message): the facts to answer with."""
    return (f"A tool ({tool}) was used to answer the user's latest message. Its result:\n"
            f"<tool_result>\n{result}\n</tool_result>\n"
            "Answer the user's latest message with this result, briefly. Do not name a source or add links: "
            "the source is added after your answer.")


def with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``messages`` with ``text`` added to the first system message, or in a new one first (chat templates want
    a system message first)."""
    if messages and messages[0].get("role") in ("system", "developer") and isinstance(messages[0].get("content"), str):
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
