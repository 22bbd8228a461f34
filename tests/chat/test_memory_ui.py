"""The web UI shows where older turns were summarised (Chromium driven by Playwright, as in test_web_ui.py): a
divider appears when an answer's summary is made, and again when the conversation is opened."""

from __future__ import annotations

from lmops.app import create_app
from lmops.testing.fake_openai import WORDS
from lmops.testing.server import ServerThread
from lmops.testing.settings import make_settings

from .test_web_ui import Page, api, chromium, fake  # noqa: F401 - fixtures, shared with the UI tests

FULL = "".join(WORDS)


def test_a_divider_shows_where_older_turns_were_summarised(chromium, fake, tmp_path):  # noqa: F811
    srv_up, upstream = fake
    models = [{"name": "memo", "engine": "openai", "replicas": [f"{srv_up.url}/v1"], "context_length": 1000,
               "defaults": {"max_tokens": 850}, "memory": {"strategy": "summary"}}]  # 150 tokens of history
    lmops = ServerThread(create_app(make_settings(tmp_path, models))).start()
    ui = Page(chromium, lmops.url, tmp_path)
    try:
        ui.page.set_default_timeout(15_000)
        ui.sign_in()
        p = ui.page
        conversation = ui.new_chat()
        for i in range(3):  # a question (56 tokens) and one turn (75) fit, two turns do not
            ui.send(f"Question {i}: " + "tell me more " * 11)
            ui.wait_answer(i + 1)
        divider = p.locator("#messages .summary-divider")
        divider.wait_for()
        assert divider.locator("summary").text_content() == "Earlier messages summarised"
        assert "memo" in (divider.get_attribute("title") or "")
        before = p.evaluate("() => document.querySelector('.summary-divider').previousElementSibling.dataset.seq")
        after = p.evaluate("() => document.querySelector('.summary-divider').nextElementSibling.textContent")
        assert before == "4" and "Question 2" in after  # after the second answer, before the third question
        sent = upstream.last_body
        assert sent is not None and sent["messages"][0]["content"].endswith(FULL)  # the fake's summary
        with api(lmops) as http:
            page = http.get(f"/api/chat/conversations/{conversation}/messages").json()
        assert page["summary"]["through_seq"] == 4
        divider.locator("summary").click()
        assert divider.locator(".summary-text").text_content() == FULL
        ui.shot("summary.png")

        p.reload()  # opened again: the divider comes from the page of messages
        p.wait_for_selector("body[data-ready]")
        p.click(f"#conversations li[data-id='{conversation}']")
        p.wait_for_selector("#messages .summary-divider")
        assert p.locator("#messages .msg").count() == 6
        assert p.evaluate("() => document.querySelector('.summary-divider').previousElementSibling.dataset.seq") == "4"
    finally:
        ui.close()
        lmops.stop()
