"""Messages as safe HTML: markdown rendered with markdown-it-py (CommonMark + tables), then sanitized by nh3.

No ``style`` attribute is kept (the UI's Content-Security-Policy refuses inline styles anyway).

Raw HTML in a message is never passed through: markdown-it escapes it (``html`` off) and nh3 keeps only the
tags and attributes below, so no script, no event handler and no ``javascript:`` URL reaches the page; links
get ``rel="noopener noreferrer"``.
"""

from __future__ import annotations

from typing import Any

import nh3
from markdown_it import MarkdownIt

TAGS = {"p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "a", "img",
        "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"}
ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "code": {"class"}, "ol": {"start"}}
SCHEMES = {"http", "https", "mailto"}


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])


class Renderer:
    """One parser, made once (each ChatService has its own: no module-level state)."""

    def __init__(self) -> None:
        self._md = _parser()

    def html(self, text: str) -> str:
        return nh3.clean(self._md.render(text), tags=TAGS, attributes=ATTRIBUTES, url_schemes=SCHEMES,
                         link_rel="noopener noreferrer")

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message with ``html``: its text rendered (the chat API's answers carry it for the web UI)."""
        return {**message, "html": self.html(message.get("content") or "")}
