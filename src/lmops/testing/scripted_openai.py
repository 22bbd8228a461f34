"""A scripted OpenAI-compatible chat upstream: each request gets the next answer of a script (follows the OpenAI
Chat Completions API as openai-python 1.x reads it, and as vLLM streams tool calls).

An answer (``Answer``) is text, or one tool call, streamed in the pieces given: text as ``delta.content`` chunks; a
call as ``delta.tool_calls`` chunks ``[{index, id, type, function: {name, arguments}}]``, the first carrying the id,
type and name, each following one a piece of the arguments, then ``finish_reason`` "tool_calls". Then the usage
chunk (when ``stream_options.include_usage`` is set) and ``[DONE]``. A request without ``stream`` gets the same
answer whole. ``answers`` are used in turn (the last one again when they run out); an answer may be a function
of the request body. ``bodies`` keeps each request's body, ``started`` / ``ended`` the times its answer began and
ended (or was cut off: ``cancelled`` counts streams the client closed before their end). ``cut_after`` ends a
stream early without ``[DONE]``, as a crashed upstream does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from lmops.testing.fake_openai import receive_body, send_json, serve_lifespan, watch_disconnect


@dataclass
class Answer:
    text: list[str] = field(default_factory=list)  # content pieces
    call: str | None = None  # the function called (then ``arguments`` are its pieces)
    arguments: list[str] = field(default_factory=list)
    delay: float = 0.0  # seconds between chunks
    usage: tuple[int, int] = (11, 5)  # prompt, completion tokens reported
    cut_after: int | None = None  # end the stream after this many events, without [DONE] (a broken upstream)


Script = Answer | Callable[[dict[str, Any]], Answer]


class ScriptedChat:
    """A bare ASGI app serving ``/v1/chat/completions`` (and ``/v1/models`` for health checks)."""

    def __init__(self, answers: list[Script]):
        self.answers = answers
        self.bodies: list[dict[str, Any]] = []
        self.started: list[float] = []
        self.ended: list[float] = []
        self.cancelled = 0

    def _next(self, body: dict[str, Any]) -> Answer:
        script = self.answers[min(len(self.bodies) - 1, len(self.answers) - 1)]
        return script if isinstance(script, Answer) else script(body)

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        raw = await receive_body(receive)
        if not scope["path"].endswith("/chat/completions"):
            await send_json(send, 200, {"object": "list", "data": [
                {"id": "scripted", "object": "model", "created": 0, "owned_by": "scripted"}]})
            return
        body = orjson.loads(raw)
        self.bodies.append(body)
        self.started.append(time.monotonic())
        answer = self._next(body)
        model = body.get("model", "scripted")
        rid, created = "chatcmpl-scripted", int(time.time())
        prompt, completion = answer.usage
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        call_id = f"call_{len(self.bodies)}"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(answer.text) or None}
            if answer.call is not None:
                message["tool_calls"] = [{"id": call_id, "type": "function", "function": {
                    "name": answer.call, "arguments": "".join(answer.arguments)}}]
            self.ended.append(time.monotonic())
            await send_json(send, 200, {"id": rid, "object": "chat.completion", "created": created, "model": model,
                                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                                 "finish_reason": "tool_calls" if answer.call else "stop"}],
                                    "usage": usage})
            return
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                                        for i, piece in enumerate(answer.text)]
        if answer.call is not None:
            deltas.append({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call_id, "type": "function", "function": {"name": answer.call, "arguments": ""}}]})
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in answer.arguments]
        finish = "tool_calls" if answer.call is not None else "stop"

        def chunk(delta: dict[str, Any], reason: str | None) -> bytes:
            return b"data: " + orjson.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                             "model": model, "choices": [{"index": 0, "delta": delta,
                                                                          "logprobs": None, "finish_reason": reason}]}
                                            ) + b"\n\n"

        events = [chunk(d, None) for d in deltas] + [chunk({}, finish)]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(b"data: " + orjson.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                                    "model": model, "choices": [], "usage": usage}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(watch_disconnect(receive, gone))
        try:
            for i, event in enumerate(events):
                if answer.cut_after is not None and i >= answer.cut_after:
                    break
                if gone.is_set():
                    self.cancelled += 1
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
                if answer.delay:
                    await asyncio.sleep(answer.delay)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (OSError, asyncio.CancelledError):
            self.cancelled += 1
            raise
        finally:
            self.ended.append(time.monotonic())
            watcher.cancel()
