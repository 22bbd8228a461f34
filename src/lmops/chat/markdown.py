"""Messages as safe HTML: markdown rendered with markdown-it-py (CommonMark + tables), then sanitized by nh3.

No ``style`` attribute is kept (the UI's Content-Security-Policy refuses inline styles anyway). markdown-it-py is
pure Python (about 4 s for a megabyte of dense markup): a text over ``MAX_MARKDOWN`` characters is shown as
escaped plain text instead, and callers render off the event loop (``messages`` in a thread).

Raw HTML in a message is never passed through: markdown-it escapes it (``html`` off) and nh3 keeps only the
tags and attributes below, so no script, no event handler and no ``javascript:`` URL reaches the page; links
get ``rel="noopener noreferrer"``.

An image is shown only from lmops itself: a relative signed URL of a generated image (``/v1/images/files/...``,
what the assistant's image tool answers). Any other image is rendered as a link to it, and nh3 drops any other
``src`` too (the page's CSP allows images from lmops alone anyway).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererProtocol
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

TAGS = frozenset({"p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "a",
                  "img", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"})
ATTRIBUTES = (("a", ("href", "title")), ("img", ("src", "alt", "title")), ("code", ("class",)), ("ol", ("start",)))
SCHEMES = frozenset({"http", "https", "mailto"})
MAX_MARKDOWN = 100_000  # characters rendered as markdown; a longer text is shown as plain text
OWN_IMAGE = re.compile(r"/v1/images/files/[A-Za-z0-9_-]+(\?[A-Za-z0-9=&_.%-]*)?")  # lmops's generated images


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])
    md.add_render_rule("image", _image)
    return md


def _image(self: RendererProtocol, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    """An image of lmops's own as ``<img>``; any other as a link to it (its alt text, else its URL)."""
    token = tokens[idx]
    src = str(token.attrs.get("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env)  # type: ignore[attr-defined]
    if OWN_IMAGE.fullmatch(src):
        title = token.attrs.get("title")
        extra = f' title="{escapeHtml(str(title))}"' if title else ""
        return f'<img src="{escapeHtml(src)}" alt="{escapeHtml(alt)}"{extra} />'
    return f'<a href="{escapeHtml(src)}">{escapeHtml(alt or src)}</a>'


def _own_images_only(tag: str, attribute: str, value: str) -> str | None:
    """nh3's filter: an ``<img>`` keeps its ``src`` only when it is one of lmops's images."""
    if tag == "img" and attribute == "src" and not OWN_IMAGE.fullmatch(value):
        return None
    return value


class Renderer:
    """One parser, made once (each ChatService has its own: no module-level state)."""

    def __init__(self) -> None:
        self._md = _parser()
        self._tags = set(TAGS)
        self._attributes = {tag: set(names) for tag, names in ATTRIBUTES}
        self._schemes = set(SCHEMES)

    def html(self, text: str) -> str:
        if len(text) > MAX_MARKDOWN:
            return f"<pre>{html.escape(text, quote=False)}</pre>\n"
        return nh3.clean(self._md.render(text), tags=self._tags, attributes=self._attributes,
                         url_schemes=self._schemes, link_rel="noopener noreferrer",
                         attribute_filter=_own_images_only)

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message with ``html``: its text rendered (the chat API's answers carry it for the web UI)."""
        return {**message, "html": self.html(message.get("content") or "")}

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each message with its ``html`` (call it in a thread: rendering is CPU work)."""
        return [self.message(m) for m in messages]
