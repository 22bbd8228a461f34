"""The embedded SmolLM2 as the function model: tool_choice "required" makes its answer a call (a grammar), streamed
as one tool_calls delta; the assistant runs what it chose, or has the default model answer."""

from __future__ import annotations

import openai

from lmops.app import create_app
from lmops.testing.scripted_openai import Answer, ScriptedChat


def test_the_embedded_model_chooses_through_a_forced_call(serve, settings_factory):
    writer = ScriptedChat([Answer(text=["Done."])])
    writer_srv = serve(writer)
    settings = settings_factory(
        [{"name": "smollm2", "engine": "embedded", "context_length": 1024, "defaults": {"max_tokens": 64}},
         {"name": "writer", "engine": "openai", "replicas": [f"{writer_srv.url}/v1"]}],
        assistant={"function_model": "smollm2", "default_model": "writer", "reasks": 1,
                   "tools": {"entry_points": False, "weather": {"enabled": False}, "wikipedia": {"enabled": False}}})
    app = create_app(settings)
    srv = serve(app)
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    resp = client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "what is 2**10"}])
    text = resp.choices[0].message.content
    assert resp.model == "assistant" and text
    # It called math (the answer cites SymPy and the writer saw the result), or none (the writer answered alone),
    # or math twice with arguments SymPy refused (the user is told): never an error.
    if text.endswith("\u2014 Source: SymPy"):
        assert "<tool_result>" in writer.bodies[0]["messages"][0]["content"]
    elif not text.startswith("Sorry"):
        assert text == "Done."
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
