"""The assistant in the web chat, in a real browser (Debian's Chromium driven by Playwright) against a running lmops
in laptop mode: the function model is scripted (OpenAI's wire format, tool calls streamed in pieces), the math tool
really runs SymPy, the image tool asks lmops's own image generation in front of the fake image backend.

``LMOPS_SCREENSHOTS=docs/screenshots`` writes the screenshots docs/assistant.md shows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse
from typing import Any

import httpx
import pytest

from lmops.app import create_app
from lmops.testing.fake_images import FakeImages
from lmops.testing.scripted_openai import Answer, ScriptedChat
from lmops.testing.server import ServerThread
from lmops.testing.settings import make_settings

from .test_web_ui import Page, chromium  # noqa: F401 - the browser and the tab watching for script errors

SOLVE = '{"operation": "solve", "expression": "x**2 - 5*x + 6 = 0"}'
DRAW = '{"prompt": "a red square"}'
TTL = 8  # seconds an image link lives here (an hour by default): long enough to load, short enough to wait out


def choose(body: dict[str, Any]) -> Answer:
    """The function model: the image tool for a drawing, else the math tool (arguments streamed in pieces)."""
    asked = body["messages"][-1]["content"]
    if "draw" in asked.lower():
        return Answer(call="image", arguments=[DRAW[:12], DRAW[12:]])
    return Answer(call="math", arguments=[SOLVE[i:i + 8] for i in range(0, len(SOLVE), 8)])


def write(body: dict[str, Any]) -> Answer:
    """The default model: phrases the tool's result it was given, word by word."""
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    found = re.search(r"<tool_result>\n(.*)\n</tool_result>", system, re.S)
    text = f"SymPy finds the {found.group(1)}." if found else "I can help with that."
    return Answer(text=[w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]], delay=0.05, usage=(30, 9))


@pytest.fixture(scope="module")
def lmops(tmp_path_factory) -> Iterator[ServerThread]:
    servers = [ServerThread(app).start() for app in (ScriptedChat([choose]), ScriptedChat([write]), FakeImages())]
    fn, writer, images = (s.url for s in servers)
    models = [{"name": "fn", "engine": "openai", "replicas": [f"{fn}/v1"], "context_length": 100_000},
              {"name": "writer", "engine": "openai", "replicas": [f"{writer}/v1"], "context_length": 100_000},
              {"name": "painter", "engine": "openai", "kind": "image", "replicas": [f"{images}/v1"]}]
    tmp = tmp_path_factory.mktemp("webassistant")
    settings = make_settings(tmp, models, images={"data_dir": str(tmp / "data"), "url_ttl_seconds": TTL},
                             assistant={"function_model": "fn", "default_model": "writer",
                                        "tools": {"entry_points": False, "weather": {"enabled": False},
                                                  "wikipedia": {"enabled": False},
                                                  "image": {"model": "painter", "size": "160x160"}}})
    srv = ServerThread(create_app(settings)).start()
    yield srv
    srv.stop()
    for server in servers:
        server.stop()


@pytest.fixture
def ui(chromium, lmops, tmp_path) -> Iterator[Page]:  # noqa: F811
    page = Page(chromium, lmops.url, tmp_path)
    page.page.set_default_timeout(15_000)
    page.sign_in()
    yield page
    page.close()


def pick_assistant(ui: Page) -> str:
    p = ui.page
    conversation = ui.new_chat()
    assert "assistant" in p.locator("#model option").all_inner_texts()
    p.select_option("#model", "assistant")
    p.wait_for_function(f"""async () => (await (await fetch('/api/chat/conversations/{conversation}')).json())
                           .model === 'assistant'""")
    return conversation


def test_a_maths_question_is_answered_by_sympy_through_the_assistant(ui, lmops):
    conversation = pick_assistant(ui)
    ui.send("Solve x² − 5x + 6 = 0")
    answer = ui.wait_answer(1)
    text = answer.locator(".body").text_content() or ""
    assert "SymPy finds the solutions for x: [2, 3]." in text
    assert text.strip().endswith("\u2014 Source: SymPy")  # the tool's acknowledgement, added by lmops
    with httpx.Client(base_url=lmops.url, headers={"authorization": "Bearer local"}, timeout=30) as http:
        stored = http.get(f"/api/chat/conversations/{conversation}/messages").json()["data"]
    assert (stored[-1]["model"], stored[-1]["status"]) == ("assistant", "complete")
    ui.shot("assistant-math.png")


def test_an_image_is_drawn_by_lmops_own_image_generation(ui):
    pick_assistant(ui)
    ui.send("Draw a red square")
    answer = ui.wait_answer(1)
    image = answer.locator(".body img")
    assert re.fullmatch(r"/v1/images/files/[A-Za-z0-9_-]+\?expires=\d+&signature=[0-9a-f]+",
                        image.get_attribute("src") or "")
    assert image.get_attribute("alt") == "a red square"
    ui.page.wait_for_function("() => { const i = document.querySelector('#messages .msg.assistant img');"
                              " return i && i.complete && i.naturalWidth > 0; }")  # loaded: the CSP allows it
    assert (answer.locator(".body").text_content() or "").strip().endswith("\u2014 Source: image model painter")
    ui.shot("assistant-image.png")
    src = image.get_attribute("src") or ""
    expires = int(parse_qs(urlparse(src).query)["expires"][0])
    assert 0 < expires - time.time() <= TTL + 1
    time.sleep(max(0.0, expires - time.time() + 1.0))
    gone = ui.page.evaluate("async (u) => { const r = await fetch(u); "
                            "return [r.status, (await r.json()).error.code]; }", src)
    assert gone == [403, "url_expired"]  # the link expired: the browser can no longer load it
    assert ui.problems == ["console: Failed to load resource: the server responded with a status of 403 (Forbidden)"]
    ui.problems.clear()  # that refusal was the point
