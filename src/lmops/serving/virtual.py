"""Virtual models: names that a handler answers on ``/v1/chat/completions`` instead of the router.

The composition root fills ``InferenceService.virtual`` (name -> handler) with what capabilities offer (the
assistant); the serving layer knows only this protocol, never the capability, so nothing here imports back.
A handler calls real models itself, each call admitted, routed and billed like any request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from lmops.engines.base import Body, Chunks
from lmops.protocol.chat import ChatCompletionRequest
from lmops.serving.context import RequestContext

Admit = Callable[[RequestContext], Awaitable[None]]  # admits a call for the caller (the guard), or raises


class ChatHandler(Protocol):
    """Answers chat completion requests for one virtual model name."""

    @property
    def models(self) -> tuple[str, ...]:
        """The models it calls: a caller sees (and may use) the virtual model when it may use every one. The last
        one writes the answers (its context length bounds a conversation's history)."""
        ...

    async def chat(self, req: ChatCompletionRequest, http: Request, ctx: RequestContext) -> Response:
        """The response to ``req`` (streamed or not), as ``InferenceService.chat`` would answer it."""
        ...

    async def open_stream(self, body: Body, ctx: RequestContext, admit: Admit) -> AsyncIterator[Chunks]:
        """Open the answer to ``body`` (a chat completion request) for a caller inside lmops (the web chat), each
        inner call admitted with ``admit`` and recorded and billed by itself: ``ctx`` is only the turn's identity
        (its request id), never recorded. The chunks carry the virtual model's name and end with a usage chunk
        (the inner calls' sum); closing the iterator closes the upstream stream. A refusal is raised here."""
        ...
