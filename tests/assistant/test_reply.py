"""The assistant's answer stream (``Reply.forward``): however it ends, the default model's stream is closed and the
call settled once, even when it is closed before its first chunk (the chat's client left at once)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from lmops.assistant.reply import Reply
from lmops.protocol.errors import ClientClosed
from lmops.serving.inner_calls import Usage


class Upstream:
    """A default model's opened stream: two words, then its usage chunk; it says whether it was closed."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = [
            [{"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}] for word in ("It ", "is.")]
        self.batches.append([{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                             {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}])
        self.closed = False

    def __aiter__(self) -> "Upstream":
        return self

    async def __anext__(self) -> list[dict[str, Any]]:
        if self.closed or not self.batches:
            raise StopAsyncIteration
        return self.batches.pop(0)

    async def aclose(self) -> None:
        self.closed = True


def forward(upstream: Upstream, settled: list[tuple[Any, int, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
    return Reply("assistant").forward(upstream, "SymPy", Usage(),
                                      lambda usage, delivered, failure: settled.append((usage, delivered, failure)))


async def test_read_to_its_end_it_ends_with_the_source_and_usage_and_settles_once():
    upstream, settled = Upstream(), []
    chunks = [c async for batch in forward(upstream, settled) for c in batch]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "It is.\n\n\u2014 Source: SymPy" and {c["model"] for c in chunks} == {"assistant"}
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1]
    assert settled == [({"prompt_tokens": 3, "completion_tokens": 2}, 2, None)] and upstream.closed


async def test_closed_mid_answer_or_before_its_first_chunk_it_closes_the_upstream_and_settles():
    upstream, settled = Upstream(), []
    stream = forward(upstream, settled)
    await anext(stream)  # type: ignore[arg-type]
    await stream.aclose()  # type: ignore[attr-defined]
    assert upstream.closed and len(settled) == 1 and settled[0][1] == 1 and isinstance(settled[0][2], ClientClosed)

    upstream, settled = Upstream(), []
    await forward(upstream, settled).aclose()  # type: ignore[attr-defined]
    assert upstream.closed and len(settled) == 1
    assert settled[0][:2] == (None, 0) and isinstance(settled[0][2], ClientClosed)
