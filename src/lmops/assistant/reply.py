"""The assistant's answer to the client: an ordinary chat completion (or chunk stream) under the assistant's name.

The default model's stream is forwarded chunk by chunk (renamed, one id for the whole answer); the source line
goes last, before the finish; the usage (when asked for) is the sum of every inner call. A fixed reply (a tool
failed, or its arguments could not be put right) is sent the same way without calling a model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import Response

from lmops.assistant.calls import Usage
from lmops.assistant.history import source_line, with_source
from lmops.engines.base import Chunks
from lmops.protocol import responses as R
from lmops.protocol.errors import APIError, ClientClosed, UpstreamError
from lmops.serving.context import RawHeaders

log = logging.getLogger("lmops.assistant")

_DONE = b"data: [DONE]\n\n"
Settle = Callable[[Any, int, APIError | None], None]  # (usage chunk, chunks delivered, failure): record the call


def _event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class Reply:
    """One answer's identity: its id, time, model name, and whether the client wants the usage chunk."""

    def __init__(self, model: str, include_usage: bool):
        self.id = R.response_id("chatcmpl")
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return R.chat_chunk(self.id, self.created, self.model, delta, finish)

    def completion(self, text: str, finish: str, usage: Usage) -> dict[str, Any]:
        body = R.chat_completion(self.id, self.model, [R.chat_choice(0, text, finish)], usage.prompt_tokens,
                                 usage.completion_tokens)
        body["created"] = self.created
        return body

    def usage_event(self, usage: Usage) -> bytes:
        return _event(R.usage_chunk(self.id, self.created, self.model, "chat.completion.chunk",
                                    usage.prompt_tokens, usage.completion_tokens))

    async def fixed_events(self, text: str, usage: Usage) -> AsyncIterator[bytes]:
        """A reply the assistant writes itself, streamed."""
        events = [_event(self.chunk({"role": "assistant", "content": text}, None)), _event(self.chunk({}, "stop"))]
        if self.include_usage:
            events.append(self.usage_event(usage))
        events.append(_DONE)
        yield b"".join(events)

    async def relay(self, batches: AsyncIterator[Chunks], source: str | None, usage: Usage,
                    settle: Settle) -> AsyncIterator[bytes]:
        """Forward the default model's stream; end it with the source line, the finish, the usage and [DONE]."""
        upstream_usage: Any = None
        delivered = 0
        finish: str | None = None
        failure: APIError | None = None
        settled = False
        try:
            async for batch in batches:
                events: list[bytes] = []
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
                    out = self.chunk(delta, None if source else choice.get("finish_reason"))
                    if choice.get("logprobs") is not None:
                        out["choices"][0]["logprobs"] = choice["logprobs"]
                    if delta or out["choices"][0]["finish_reason"]:
                        events.append(_event(out))
                if events:
                    yield b"".join(events)
            tail: list[bytes] = []
            if source:
                tail.append(_event(self.chunk({"content": "\n\n" + source_line(source)}, None)))
                tail.append(_event(self.chunk({}, finish or "stop")))
            settled = True
            settle(upstream_usage, delivered, None)
            if self.include_usage:
                tail.append(self.usage_event(usage))
            tail.append(_DONE)
            yield b"".join(tail)
        except APIError as exc:
            failure = exc
            yield _event(exc.envelope())
        except Exception as exc:  # noqa: BLE001 - a broken stream ends with an error event, never a crash
            log.exception("the assistant's stream failed")
            failure = UpstreamError(f"The stream failed: {type(exc).__name__}")
            yield _event(failure.envelope())
        finally:
            await batches.aclose()  # type: ignore[attr-defined]  # stop the engine now
            if not settled:
                settle(upstream_usage, delivered, failure or ClientClosed())

    async def collect(self, batches: AsyncIterator[Chunks], source: str | None, usage: Usage,
                      settle: Settle) -> dict[str, Any]:
        """Read the default model's whole stream into one chat completion."""
        parts: list[str] = []
        upstream_usage: Any = None
        finish = "stop"
        failure: APIError | None = None
        try:
            async for batch in batches:
                for chunk in batch:
                    if chunk.get("usage"):
                        upstream_usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            parts.append(content)
                        finish = choice.get("finish_reason") or finish
        except APIError as exc:
            failure = exc
            raise
        except Exception as exc:
            log.exception("the assistant's answer failed")
            failure = UpstreamError(f"The answer failed: {type(exc).__name__}")
            raise failure from exc
        except BaseException:  # cancelled: the client went away
            failure = ClientClosed()
            raise
        finally:
            await batches.aclose()  # type: ignore[attr-defined]
            settle(upstream_usage, len(parts), failure)
        return self.completion(with_source("".join(parts), source), finish, usage)


def json_response(body: dict[str, Any], headers: RawHeaders | None) -> Response:
    response = Response(orjson.dumps(body), media_type="application/json")
    if headers:
        response.raw_headers += headers
    return response
