"""The web chat UI in a real browser (Debian's Chromium driven by Playwright) against a running lmops in laptop
mode, in front of the fake upstream. Chromium missing: skipped locally, a failure under CI (.ci/run installs it).

``LMOPS_SCREENSHOTS=docs/screenshots`` writes the screenshots docs/chat.md shows.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest


from .conftest import PASSWORD, make_user
from lmops.app import create_app
from lmops.testing.fake_openai import WORDS, Behaviour, FakeOpenAI
from lmops.testing.server import ServerThread
from lmops.testing.settings import make_settings

CHROMIUM = "/usr/bin/chromium"
FULL = "".join(WORDS)
HOSTILE = "<script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=alert(1)>"
SHOTS = os.environ.get("LMOPS_SCREENSHOTS")


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[ServerThread, FakeOpenAI]]:
    app = FakeOpenAI(Behaviour())
    srv = ServerThread(app).start()
    yield srv, app
    srv.stop()


@pytest.fixture(scope="module")
def lmops(fake, tmp_path_factory) -> Iterator[ServerThread]:
    srv_up, _ = fake
    models = [{"name": "fake", "engine": "openai", "replicas": [f"{srv_up.url}/v1"], "context_length": 100_000},
              {"name": "other", "engine": "openai", "replicas": [f"{srv_up.url}/v1"], "context_length": 100_000}]
    srv = ServerThread(create_app(make_settings(tmp_path_factory.mktemp("webui"), models))).start()
    yield srv
    srv.stop()


@pytest.fixture
def fake_upstream(fake) -> Iterator[FakeOpenAI]:
    """The fake upstream, its behaviour reset after each test."""
    _, app = fake
    yield app
    app.behaviour = Behaviour()


@pytest.fixture(scope="module")
def chromium(require_service) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        require_service("Playwright", f"pip install playwright: {exc}")
    if not os.path.exists(CHROMIUM):
        require_service("Chromium", f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


class Page:
    """A browser tab on the UI, watching for what must never happen: dialogs, script errors, CSP refusals."""

    def __init__(self, browser: Any, url: str, tmp: Path):
        self.context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        self.page = self.context.new_page()
        self.url = url
        self.tmp = tmp
        self.dialogs: list[str] = []
        self.problems: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        self.page.on("console", self._console)
        self.accept_dialogs = False

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.accept() if self.accept_dialogs else dialog.dismiss()

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and "status of 401" not in msg.text:  # the session check before signing in
            self.problems.append(f"console: {msg.text}")

    def sign_in(self) -> None:
        p = self.page
        p.goto(self.url + "/")
        p.wait_for_selector("#signin-form", state="visible")
        p.fill("#username", "local")
        p.click("#signin-form button[type=submit]")
        p.wait_for_selector("body[data-ready]")

    def new_chat(self) -> str:
        p = self.page
        old = p.evaluate("() => [...document.querySelectorAll('#conversations li')].map(li => li.dataset.id)")
        p.click("#new-chat")
        handle = p.wait_for_function(f"""() => {{
            const li = document.querySelector('#conversations li.current');
            return li && !{old!r}.includes(li.dataset.id) && li.dataset.id; }}""")
        return str(handle.json_value())

    def send(self, text: str) -> None:
        self.page.fill("#input", text)
        self.page.click("#send")

    def wait_answer(self, count: int) -> Any:
        """Wait until ``count`` stored answers are shown (the final event swapped them in); the last one."""
        self.page.wait_for_function(
            f"() => document.querySelectorAll('#messages .msg.assistant[data-id]').length === {count}"
            " && !document.querySelector('#messages .pending')", timeout=20_000)
        return self.page.locator("#messages .msg.assistant[data-id]").last

    def shot(self, name: str) -> None:
        path = Path(SHOTS) / name if SHOTS else self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))

    def close(self) -> None:
        assert self.problems == [], self.problems
        self.context.close()


@pytest.fixture
def ui(chromium, lmops, tmp_path) -> Iterator[Page]:
    page = Page(chromium, lmops.url, tmp_path)
    page.page.set_default_timeout(15_000)
    page.sign_in()
    yield page
    page.close()


def api(lmops: ServerThread) -> httpx.Client:
    """The chat API as the local user (laptop mode: any Authorization header is the local user, no CSRF)."""
    return httpx.Client(base_url=lmops.url, headers={"authorization": "Bearer local"}, timeout=30)


def imported(lmops: ServerThread, title: str, messages: list[tuple[str, str]]) -> str:
    """A conversation made through the import endpoint (Open WebUI's shape); its id."""
    chat = {"messages": [{"role": role, "content": text, "timestamp": 1_700_000_000 + i}
                         for i, (role, text) in enumerate(messages)]}
    with api(lmops) as http:
        resp = http.post("/api/chat/import", json=[{"id": "x", "title": title, "created_at": 1_700_000_000,
                                                    "chat": chat}])
    assert resp.status_code == 201, resp.text
    return str(resp.json()["conversations"][0])


def test_the_page_is_served_with_a_strict_content_security_policy(lmops):
    page = httpx.get(f"{lmops.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert '<script type="module" src="/static/app.js">' in page.text and "<script>" not in page.text
    js = httpx.get(f"{lmops.url}/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{lmops.url}/static/api.js").status_code == 200
    assert httpx.get(f"{lmops.url}/static/app.css").headers["content-type"].startswith("text/css")
    for bad in ("/static/index.html", "/static/..%2Fwebui.py", "/static/nope.js"):
        assert httpx.get(f"{lmops.url}{bad}").status_code == 404, bad


def test_sign_in_then_an_answer_streams_token_by_token(ui, fake_upstream):
    fake_upstream.behaviour.chunk_delay = 0.15
    p = ui.page
    assert p.locator("#model option").all_inner_texts() == ["(default model)", "fake", "other"]
    ui.new_chat()
    ui.send("Tell me about **foxes**")
    body = p.locator("#messages .msg.assistant.pending .body")
    p.wait_for_function("() => (document.querySelector('#messages .pending .body') || {}).textContent?.length > 0")
    partial = body.text_content() or ""
    assert partial and partial != FULL  # shown before the answer ended
    answer = ui.wait_answer(1)
    assert answer.locator(".body").text_content().strip() == FULL
    question = p.locator("#messages .msg.user").last
    assert question.locator(".body strong").text_content() == "foxes"  # the server's HTML swapped in
    p.wait_for_function("() => document.querySelector('#conversations li.current')?.textContent"
                        " === 'Tell me about **foxes**'")  # the first question names the chat
    p.wait_for_function("() => document.getElementById('title').value === 'Tell me about **foxes**'")
    ui.shot("chat.png")


def test_stop_keeps_a_partial_answer_marked_stopped(ui, fake_upstream, lmops):
    fake_upstream.behaviour.chunk_delay = 0.3
    fake_upstream.behaviour.words = 60
    p = ui.page
    conversation = ui.new_chat()
    ui.send("A long answer please")
    p.wait_for_function("() => (document.querySelector('#messages .pending .body') || {}).textContent?.length > 0")
    assert p.locator("#stop").is_enabled()
    p.click("#stop")
    stopped = ui.wait_answer(1)
    assert "stopped" in (stopped.get_attribute("class") or "")
    assert stopped.locator(".status").text_content() == "stopped"
    text = stopped.locator(".body").text_content() or ""
    assert 0 < len(text.split()) < 60
    assert p.locator("#stop").is_disabled() and p.locator("#send").is_enabled()
    with api(lmops) as http:
        stored = http.get(f"/api/chat/conversations/{conversation}/messages").json()["data"]
    assert stored[-1]["status"] == "stopped" and stored[-1]["content"].strip() == text.strip()


def test_settings_reach_the_upstream_and_the_model_picker_is_kept(ui, fake_upstream, lmops):
    p = ui.page
    conversation = ui.new_chat()
    p.click("#settings-toggle")
    p.fill("#system-prompt", "You are terse.")
    p.fill("#temperature", "0.3")
    p.fill("#top-p", "0.9")
    p.fill("#repetition-penalty", "1.1")
    p.fill("#max-tokens", "4")
    p.click("#settings button[type=submit]")
    p.wait_for_selector("#settings-saved:has-text('Saved')")
    p.select_option("#model", "other")
    p.wait_for_function(f"""async () => (await (await fetch('/api/chat/conversations/{conversation}')).json())
                           .model === 'other'""")
    ui.send("Hello")
    answer = ui.wait_answer(1)
    sent = fake_upstream.last_body
    assert sent is not None and sent["model"] == "other"
    assert sent["temperature"] == 0.3 and sent["top_p"] == 0.9 and sent["repetition_penalty"] == 1.1
    assert (sent.get("max_tokens") or sent.get("max_completion_tokens")) == 4
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert answer.locator(".body").text_content().strip() == "".join(WORDS[:4])
    with api(lmops) as http:
        conv = http.get(f"/api/chat/conversations/{conversation}").json()
    assert conv["params"] == {"temperature": 0.3, "top_p": 0.9, "repetition_penalty": 1.1, "max_tokens": 4}


def test_regenerate_and_edit_and_resend(ui, fake_upstream, lmops):
    p = ui.page
    conversation = ui.new_chat()
    ui.send("First question")
    ui.wait_answer(1)
    first_id = p.locator("#messages .msg.assistant[data-id]").last.get_attribute("data-id")
    calls = fake_upstream.requests
    p.click("#messages .msg.assistant .regenerate")
    answer = ui.wait_answer(1)
    assert fake_upstream.requests == calls + 1
    assert answer.get_attribute("data-id") != first_id
    assert fake_upstream.last_body["messages"][-1] == {"role": "user", "content": "First question"}
    ui.send("Second question")
    ui.wait_answer(2)
    p.locator("#messages .msg.user").first.locator(".edit").click()
    p.fill("#messages .edit-text", "First question, edited")
    p.click("#messages .edit-send")
    ui.wait_answer(1)
    assert p.locator("#messages .msg").count() == 2
    assert p.locator("#messages .msg.user .body").text_content().strip() == "First question, edited"
    assert fake_upstream.last_body["messages"][-1] == {"role": "user", "content": "First question, edited"}
    with api(lmops) as http:
        stored = http.get(f"/api/chat/conversations/{conversation}/messages").json()["data"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["content"] == "First question, edited"


def test_export_xlsx_download_has_the_conversations_rows(ui, fake_upstream, tmp_path):
    import openpyxl

    p = ui.page
    ui.new_chat()
    ui.send("Export me")
    ui.wait_answer(1)
    p.wait_for_function("() => document.getElementById('title').value === 'Export me'")
    title = "Export me"
    with p.expect_download() as info:
        p.click("header a.export[data-format=xlsx]")
    download = info.value
    assert download.suggested_filename == "lmops-chat.xlsx"
    path = tmp_path / "export.xlsx"
    download.save_as(str(path))
    rows = list(openpyxl.load_workbook(path).active.iter_rows(values_only=True))
    assert rows[0][:4] == ("conversation_id", "conversation_title", "time", "role")
    assert [(r[1], r[3], r[8]) for r in rows[1:]] == [(title, "user", "Export me"), (title, "assistant", FULL)]
    with p.expect_download() as info:
        p.click("#sidebar a.export[data-format=csv]")
    assert info.value.suggested_filename == "lmops-chat.csv"
    with p.expect_download() as info:
        p.click("header a.export[data-format=json]")
    rows = json.loads(Path(info.value.path()).read_text())
    assert [(r["role"], r["text"]) for r in rows] == [("user", "Export me"), ("assistant", FULL)]
    with p.expect_download() as info:
        p.click("header a.export[data-format=md]")
    markdown = Path(info.value.path()).read_text()
    assert markdown.startswith("# Export me") and FULL in markdown
    p.click("#settings-toggle")
    ui.shot("export.png")


def test_a_thousand_message_conversation_opens_fast_and_pages_upwards(ui, lmops):
    messages = [("user" if i % 2 == 0 else "assistant", f"message number {i}") for i in range(1000)]
    conversation = imported(lmops, "A long conversation", messages)
    p = ui.page
    p.reload()
    p.wait_for_selector("body[data-ready]")
    started = time.monotonic()
    p.click(f"#conversations li[data-id='{conversation}']")
    p.wait_for_function("() => document.querySelectorAll('#messages .msg').length === 50")
    opened = time.monotonic() - started
    assert opened < 5, opened  # one page of 50, not the 1,000
    assert p.locator("#messages .msg .body").last.text_content().strip() == "message number 999"
    ui.shot("long-conversation.png")
    count = 50
    while count < 150:
        p.evaluate("() => { const box = document.getElementById('messages'); box.scrollTop = 0;"
                   " box.dispatchEvent(new Event('scroll')); }")  # the event, even if the view was already at 0
        p.wait_for_function(f"() => document.querySelectorAll('#messages .msg').length > {count}"
                            " && !document.querySelector('#messages .loading-older')")
        count = p.locator("#messages .msg").count()
        assert count % 50 == 0  # whole pages
        assert p.locator("#messages .msg .body").first.text_content().strip() == f"message number {1000 - count}"
        assert p.locator("#messages .msg .body").last.text_content().strip() == "message number 999"
    assert p.evaluate("() => document.getElementById('messages').scrollTop") > 0


def test_hostile_markdown_renders_inert(ui, lmops):
    p = ui.page
    conversation = imported(lmops, "Hostile", [
        ("user", "Render this"),
        ("assistant", HOSTILE + "\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nprint(1)\n```\n\n"
                      "[site](https://example.com) <a href=\"javascript:alert(2)\">y</a>"),
    ])
    p.reload()
    p.wait_for_selector("body[data-ready]")
    p.click(f"#conversations li[data-id='{conversation}']")
    p.wait_for_selector("#messages .msg.assistant table")
    ui.send("<img src=x onerror=alert(3)> <script>alert(4)</script> [z](javascript:alert(5))")
    ui.wait_answer(2)
    p.wait_for_timeout(500)
    assert ui.dialogs == []
    assert p.evaluate("() => document.querySelectorAll('#messages script, #messages img').length") == 0
    assert p.evaluate("""() => [...document.querySelectorAll('#messages *')].filter(
        e => [...e.attributes].some(a => a.name.startsWith('on'))).length""") == 0
    hrefs = p.eval_on_selector_all("#messages a", "els => els.map(e => [e.getAttribute('href'), e.rel])")
    assert hrefs == [["https://example.com", "noopener noreferrer"]]
    assert "<script>alert(1)</script>" in (p.locator("#messages .msg.assistant .body").first.text_content() or "")
    assert p.locator("#messages .msg.assistant pre code").text_content() == "print(1)\n"
    ui.shot("markdown.png")


def test_conversations_new_rename_search_delete_and_import(ui, lmops, tmp_path):
    p = ui.page
    conversation = ui.new_chat()
    p.fill("#title", "Zebra facts")
    p.press("#title", "Enter")
    p.locator("#title").blur()
    p.wait_for_selector(f"#conversations li[data-id='{conversation}']:has-text('Zebra facts')")
    p.fill("#search", "zebra")
    p.wait_for_function("() => [...document.querySelectorAll('#conversations li')].map(l => l.textContent)"
                        ".join('|') === 'Zebra facts'")
    p.fill("#search", "")
    p.wait_for_function("() => document.querySelectorAll('#conversations li').length > 1")
    p.click(f"#conversations li[data-id='{conversation}']")
    ui.accept_dialogs = True
    p.click("#delete")
    p.wait_for_selector(f"#conversations li[data-id='{conversation}']", state="detached")
    assert ui.dialogs and ui.dialogs[-1].startswith("confirm")
    with api(lmops) as http:
        assert http.get(f"/api/chat/conversations/{conversation}").status_code == 404
    export = tmp_path / "conversations.json"
    export.write_text('[{"title": "Imported from ChatGPT", "create_time": 1700000000, "mapping": {'
                      '"a": {"id": "a", "message": {"author": {"role": "user"}, "content": {"parts": ["hi"]},'
                      ' "create_time": 1700000001}, "parent": null, "children": []}}}]')
    p.set_input_files("#import-file", str(export))
    p.wait_for_selector("#import-result:has-text('Imported 1 conversation')")
    p.wait_for_selector("#conversations li:has-text('Imported from ChatGPT')")


def test_with_access_control_a_user_signs_in_with_the_web_password(chromium, start_gateway, tmp_path):
    gw = start_gateway(database_url=f"sqlite+aiosqlite:///{tmp_path / 'access.db'}")
    user = make_user(gw, gw.team()["id"])
    ui = Page(chromium, gw.url, tmp_path)
    p = ui.page
    p.goto(gw.url + "/")
    p.fill("#username", user["name"])
    p.fill("#password", "wrong password")
    p.click("#signin-form button[type=submit]")
    p.wait_for_selector("#signin-error:has-text('Incorrect username or password')")
    assert p.locator("#app").is_hidden()
    p.fill("#password", PASSWORD)
    p.click("#signin-form button[type=submit]")
    p.wait_for_selector("body[data-ready]")
    assert p.locator("#who").text_content() == f"Signed in as {user['name']}"
    assert p.locator("#model option").all_inner_texts() == ["(default model)", "fake", "other"]
    ui.new_chat()
    ui.send("Hello")
    assert ui.wait_answer(1).locator(".body").text_content().strip() == FULL
    p.reload()  # the session cookie keeps the user signed in
    p.wait_for_selector("body[data-ready]")
    p.click("#sign-out")
    p.wait_for_selector("#signin-form", state="visible")
    p.reload()
    p.wait_for_selector("#signin-form", state="visible")
    ui.problems = [x for x in ui.problems if "status of 401" not in x]  # the wrong password's answer
    ui.close()
