"""Reading the function model's stream: how far, and what it asks for (chunks in OpenAI's wire format)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from lmops.assistant.router import decide


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def call_start(name: str, index: int = 0, id_: str = "call_1") -> dict[str, Any]:
    return chunk({"tool_calls": [{"index": index, "id": id_, "type": "function",
                                  "function": {"name": name, "arguments": ""}}]})


def args(piece: str, index: int = 0) -> dict[str, Any]:
    return chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})


class Stream:
    """A stream of batches that counts how many were read."""

    def __init__(self, batches: list[list[dict[str, Any]]]):
        self.batches = batches
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        for batch in self.batches:
            self.read += 1
            yield batch


USAGE = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


async def test_a_call_in_pieces_is_read_to_its_end():
    stream = Stream([[chunk({"role": "assistant", "content": ""})], [call_start("math")], [args('{"a": ')],
                     [args('1}')], [chunk({}, "tool_calls")], [USAGE]])
    d = await decide(stream.__aiter__(), 8)
    assert d.why == "tool" and d.ended and d.usage == USAGE["usage"]
    assert (d.call.id, d.call.name, d.call.arguments) == ("call_1", "math", '{"a": 1}')
    assert d.call.message()["tool_calls"][0]["function"] == {"name": "math", "arguments": '{"a": 1}'}


async def test_none_and_text_decide_at_once():
    stream = Stream([[call_start("none")], [args("{}")], [chunk({}, "tool_calls")]])
    d = await decide(stream.__aiter__(), 8)
    assert (d.call, d.why, d.ended, stream.read) == (None, "none", False, 1)
    stream = Stream([[chunk({"content": f"w{i}"})] for i in range(20)])
    d = await decide(stream.__aiter__(), 3)
    assert (d.call, d.why, d.tokens, stream.read) == (None, "text", 3, 3)


async def test_text_before_a_call_within_detect_tokens_still_counts_the_call():
    stream = Stream([[chunk({"content": "Let me"})], [chunk({"content": " check."})], [call_start("weather")],
                     [args('{"city": "Oslo"}')]])
    d = await decide(stream.__aiter__(), 8)
    assert d.why == "tool" and d.call.arguments == '{"city": "Oslo"}'


async def test_only_the_first_of_parallel_calls_is_taken():
    stream = Stream([[call_start("math", 0, "a"), call_start("weather", 1, "b")], [args("{}", 1)],
                     [args('{"x": 1}', 0)]])
    d = await decide(stream.__aiter__(), 8)
    assert (d.call.id, d.call.name, d.call.arguments) == ("a", "math", '{"x": 1}')


async def test_a_stream_without_a_call_or_text():
    d = await decide(Stream([[chunk({"role": "assistant"})], [chunk({}, "stop")], [USAGE]]).__aiter__(), 8)
    assert (d.call, d.why, d.ended) == (None, "nothing", True)
