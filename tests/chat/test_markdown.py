"""Messages rendered as safe HTML (markdown-it-py, then nh3), and the ``html`` field the chat API answers with."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from lmops.chat.markdown import MAX_MARKDOWN, Renderer

from .conftest import make_user, sign_in

HOSTILE = [
    "<script>alert(1)</script>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "<img src=x onerror=alert(1)>",
    "![a](javascript:alert(1))",
    '<a href="javascript:alert(1)">y</a>',
    "[x](data:text/html,<script>alert(1)</script>)",
    '<div style="x" onclick="alert(1)">z</div>',
]


class Elements(HTMLParser):
    """The elements of an HTML fragment, with their attributes, as a browser's parser sees them."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_markdown_is_inert(text):
    html = Renderer().html(text)
    assert Elements(html).found == [("p", {})], html  # the markup is shown as text, nothing else
    assert "&lt;" in html or "](" in html


def test_markdown_tables_code_lists_and_links():
    r = Renderer()
    table = r.html("| a | b |\n|---|---|\n| 1 | 2 |")
    assert "<table>" in table and "<th>a</th>" in table and "<td>2</td>" in table
    assert r.html("```python\nprint('<b>')\n```") == (
        '<pre><code class="language-python">print(\'&lt;b&gt;\')\n</code></pre>\n')
    assert r.html("- one\n- two\n\n3. three") == (
        '<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n<ol start="3">\n<li>three</li>\n</ol>\n')
    assert r.html("[site](https://example.com)") == (
        '<p><a href="https://example.com" rel="noopener noreferrer">site</a></p>\n')
    assert "style" not in r.html("| a |\n|:-:|\n| 1 |")  # the UI's CSP refuses inline styles


def test_only_lmops_own_generated_images_are_shown_others_are_links():
    r = Renderer()
    own = "/v1/images/files/img_01?expires=1767225600&signature=0f9a"
    assert r.html(f"![a cat]({own})") == (
        '<p><img src="/v1/images/files/img_01?expires=1767225600&amp;signature=0f9a" alt="a cat"></p>\n')
    for other in ("https://img.example/cat.png", "//img.example/v1/images/files/x", "/v1/images/files/../../x",
                  "/api/chat/me", "data:image/png;base64,iVBORw0KGgo="):
        html = r.html(f"![a cat]({other})")
        assert [tag for tag, _ in Elements(html).found] in (["p", "a"], ["p"]), html  # a link, or text
        assert "<img" not in html
    assert r.html("![](https://img.example/cat.png)") == (
        '<p><a href="https://img.example/cat.png" rel="noopener noreferrer">https://img.example/cat.png</a></p>\n')


def test_a_very_long_text_is_shown_as_escaped_plain_text():
    text = "**a** <script>x</script> " * (MAX_MARKDOWN // 20)
    html = Renderer().html(text)
    assert html.startswith("<pre>**a** &lt;script&gt;x&lt;/script&gt;") and "<strong>" not in html
    assert Elements(html).found == [("pre", {})]


@pytest.fixture
def browser(chat_gateway):
    gw = chat_gateway
    return sign_in(gw.url, make_user(gw, gw.team()["id"])["name"])


def test_messages_and_answers_carry_sanitized_html(browser):
    conv = browser.ok("POST", "/api/chat/conversations", json={"model": "fake"})
    _, final = browser.ask(conv["id"], "**bold** <script>alert(1)</script>")
    question, answer = final["messages"]
    assert question["html"] == "<p><strong>bold</strong> &lt;script&gt;alert(1)&lt;/script&gt;</p>\n"
    assert answer["html"] == f"<p>{answer['content']}</p>\n"
    page = browser.get(f"/api/chat/conversations/{conv['id']}/messages").json()["data"]
    assert [m["html"] for m in page] == [question["html"], answer["html"]]
