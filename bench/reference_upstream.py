"""A fake OpenAI-compatible upstream written the way OpenAI-compatible servers usually are: FastAPI + pydantic.

vLLM's and lmdeploy's OpenAI front ends are FastAPI apps that validate each request with a pydantic model and
answer through FastAPI's responses; the mock servers people write to test against the OpenAI API mostly look the
same. This one answers like ``lmops.testing.fake_openai`` (the same fixed words, the same usage, streamed or not,
the final usage chunk when ``stream_options.include_usage`` is set) but serves on that ordinary stack, run by
uvicorn with its defaults and no access log. Its own cost per request is of the order of the bare upstream quoted
in issue 2 (~3,800 requests/s on its 2-core machine), which ``fake_openai``, a framework-less ASGI app, is not:
``gateway_overhead.py --reference`` measures lmops against both, side by side.

Run: ``python bench/reference_upstream.py PORT``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from lmops.testing.fake_openai import WORDS


class Message(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatMessage(BaseModel):
    role: str = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str = "stop"
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


def _usage() -> Usage:
    return Usage(prompt_tokens=7, completion_tokens=len(WORDS), total_tokens=7 + len(WORDS))


async def _events(req: ChatRequest) -> AsyncIterator[str]:
    created = int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    for i, word in enumerate([*WORDS, None]):
        delta = {} if word is None else ({"role": "assistant", "content": word} if i == 0 else {"content": word})
        chunk: dict[str, Any] = {"id": "cmpl-ref", "object": "chat.completion.chunk", "created": created,
                                 "model": req.model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                  "finish_reason": None if word else "stop"}]}
        if include_usage:
            chunk["usage"] = None
        yield "data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n"
    if include_usage:
        last = {"id": "cmpl-ref", "object": "chat.completion.chunk", "created": created, "model": req.model,
                "choices": [], "usage": _usage().model_dump()}
        yield "data: " + json.dumps(last, separators=(",", ":")) + "\n\n"
    yield "data: [DONE]\n\n"


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> ChatResponse | StreamingResponse:
        if req.stream:
            return StreamingResponse(_events(req), media_type="text/event-stream")
        return ChatResponse(id="cmpl-ref", created=int(time.time()), model=req.model,
                            choices=[Choice(message=ChatMessage(content="".join(WORDS)))], usage=_usage())

    return app


def main() -> None:
    port = int(sys.argv[1])
    uvicorn.run(create_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
