"""The assistant's answer: an ordinary chat completion chunk stream under the assistant's name.

``forward`` turns the default model's stream into the assistant's chunks (renamed, one id for the whole answer),
with the source line last, before the finish, and a usage chunk (the sum of every inner call) at the end; ``fixed``
is a reply the assistant writes itself (a tool failed, an image was made) in the same shape. Those chunks are the
answer for every caller: the web chat reads them as they are; ``/v1`` sends them as server-sent events
(``events``) or reads them into one chat completion (``collect``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import Response

from lmops.assistant.history import source_line
from lmops.engines.base import Chunks
from lmops.protocol import responses as R
from lmops.protocol.errors import APIError, ClientClosed, UpstreamError
from lmops.serving.context import RawHeaders
from lmops.serving.inner_calls import Usage

log = logging.getLogger("lmops.assistant")

_DONE = b"data: [DONE]\n\n"
Settle = Callable[[Any, int, APIError | None], None]  # (usage chunk, chunks delivered, failure): record the call


def _event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class Reply:
    """One answer's identity: its id, time and model name."""

    def __init__(self, model: str):
        self.id = R.response_id("chatcmpl")
        self.created = int(time.time())
        self.model = model

    def chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return R.chat_chunk(self.id, self.created, self.model, delta, finish)

    def completion(self, text: str, finish: str, usage: Usage) -> dict[str, Any]:
        body = R.chat_completion(self.id, self.model, [R.chat_choice(0, text, finish)], usage.prompt_tokens,
                                 usage.completion_tokens)
        body["created"] = self.created
        return body

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return R.usage_chunk(self.id, self.created, self.model, "chat.completion.chunk", usage.prompt_tokens,
                             usage.completion_tokens)

    async def fixed(self, text: str, usage: Usage) -> AsyncIterator[Chunks]:
        """A reply the assistant writes itself."""
        yield [self.chunk({"role": "assistant", "content": text}, None), self.chunk({}, "stop"),
               self.usage_chunk(usage)]

    def forward(self, batches: AsyncIterator[Chunks], source: str | None, usage: Usage,
                settle: Settle) -> AsyncIterator[Chunks]:
        """The default model's stream as the assistant's; then the source line, the finish and the usage chunk.
        A failure of the stream is raised (an ``APIError``); however it ends, the call is settled once and its
        stream closed (closing this iterator closes it at once, even before its first chunk)."""
        return _Forward(self._forward(batches, source, usage, settle), batches, settle)

    async def _forward(self, batches: AsyncIterator[Chunks], source: str | None, usage: Usage,
                       settle: Settle) -> AsyncIterator[Chunks]:
        upstream_usage: Any = None
        delivered = 0
        finish: str | None = None
        failure: APIError | None = None
        settled = False
        try:
            async for batch in batches:
                out: Chunks = []
                for chunk in batch:
                    if chunk.get("usage"):
                        upstream_usage = chunk["usage"]
                    choices = chunk.get("choices")
                    if not choices:
                        continue
                    choice = choices[0]
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        delivered += 1
                    finish = choice.get("finish_reason") or finish
                    mine = self.chunk(delta, None if source else choice.get("finish_reason"))
                    if choice.get("logprobs") is not None:
                        mine["choices"][0]["logprobs"] = choice["logprobs"]
                    if delta or mine["choices"][0]["finish_reason"]:
                        out.append(mine)
                if out:
                    yield out
            tail: Chunks = []
            if source:
                tail.append(self.chunk({"content": "\n\n" + source_line(source)}, None))
                tail.append(self.chunk({}, finish or "stop"))
            settled = True
            settle(upstream_usage, delivered, None)
            tail.append(self.usage_chunk(usage))
            yield tail
        except APIError as exc:
            failure = exc
            raise
        except Exception as exc:
            log.exception("the assistant's answer failed")
            failure = UpstreamError(f"The stream failed: {type(exc).__name__}")
            raise failure from exc
        finally:
            await batches.aclose()  # type: ignore[attr-defined]  # stop the engine now
            if not settled:
                settle(upstream_usage, delivered, failure or ClientClosed())


class _Forward:
    """``Reply._forward``'s chunks; closed before the first is asked for (a generator's ``finally`` would not
    run then), it still closes the upstream stream and settles the call."""

    def __init__(self, chunks: AsyncIterator[Chunks], batches: AsyncIterator[Chunks], settle: Settle):
        self._chunks = chunks
        self._batches = batches
        self._settle = settle
        self._started = False

    def __aiter__(self) -> "_Forward":
        return self

    async def __anext__(self) -> Chunks:
        self._started = True
        return await anext(self._chunks)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        if not self._started:
            self._started = True
            await self._batches.aclose()  # type: ignore[attr-defined]
            self._settle(None, 0, ClientClosed())
        await self._chunks.aclose()  # type: ignore[attr-defined]


async def events(chunks: AsyncIterator[Chunks], include_usage: bool) -> AsyncIterator[bytes]:
    """The answer as server-sent events (``/v1`` streaming): its chunks (the usage chunk when asked for), then
    [DONE]; a failure ends it with an error event instead."""
    try:
        async for batch in chunks:
            sent = b"".join(_event(c) for c in batch if include_usage or c.get("choices"))
            if sent:
                yield sent
        yield _DONE
    except APIError as exc:
        yield _event(exc.envelope())
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def collect(reply: Reply, chunks: AsyncIterator[Chunks], usage: Usage) -> dict[str, Any]:
    """The answer read whole into one chat completion (``/v1`` without streaming); a failure is raised."""
    parts: list[str] = []
    finish = "stop"
    try:
        async for batch in chunks:
            for chunk in batch:
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        parts.append(content)
                    finish = choice.get("finish_reason") or finish
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    return reply.completion("".join(parts), finish, usage)


def json_response(body: dict[str, Any], headers: RawHeaders | None) -> Response:
    response = Response(orjson.dumps(body), media_type="application/json")
    if headers:
        response.raw_headers += headers
    return response
