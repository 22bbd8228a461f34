"""Source lines and image links: added to answers, taken out of the history the default model sees."""

from __future__ import annotations

from lmops.assistant.history import clean_history, clean_text, source_line, with_source, with_system

SOURCE = "\u2014 Source: "


def test_an_answer_ends_with_its_source_on_a_line_of_its_own():
    assert with_source("It is 1024. ", "SymPy") == "It is 1024.\n\n" + SOURCE + "SymPy"
    assert with_source("It is 1024.", None) == "It is 1024."
    assert source_line("Wikipedia: Paris\n(https://x)") == SOURCE + "Wikipedia: Paris (https://x)"


def test_history_loses_source_lines_and_image_links_of_assistant_messages_only():
    messages = [
        {"role": "system", "content": "Be brief. ![keep](http://x/k.png)"},
        {"role": "user", "content": "show me a cat ![mine](http://x/mine.png)\n" + SOURCE + "me"},
        {"role": "assistant", "content": "Here it is: ![a cat](https://img.example/cat.png)\n\n" + SOURCE + "Images"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is 4.\n\n" + SOURCE + "SymPy"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
        {"role": "assistant", "content": "The dash \u2014 Source: not a source line, mid-sentence."},
    ]
    cleaned = clean_history(messages)
    assert cleaned[:2] == messages[:2]  # not the assistant's: left alone
    assert cleaned[2] == {"role": "assistant", "content": "Here it is:"}
    assert cleaned[3]["content"] == [{"type": "text", "text": "It is 4."}]
    assert cleaned[4] == messages[4]
    assert cleaned[5] == messages[5]
    assert messages[2]["content"].endswith("Images")  # the caller's list is not changed


def test_several_source_lines_and_links_go():
    text = "A\n\n" + SOURCE + "one\nB ![x](y) C\n" + SOURCE + "two"
    assert clean_text(text) == "A\nB  C"


def test_the_tool_context_joins_the_first_system_message():
    assert with_system([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}], "T") == [
        {"role": "system", "content": "Be brief.\n\nT"}, {"role": "user", "content": "q"}]
    assert with_system([{"role": "user", "content": "q"}], "T") == [
        {"role": "system", "content": "T"}, {"role": "user", "content": "q"}]

