"""Virtual models: names that a handler answers on ``/v1/chat/completions`` instead of the router.

The composition root fills ``InferenceService.virtual`` (name -> handler) with what capabilities offer (the
assistant); the serving layer knows only this protocol, never the capability, so nothing here imports back.
A handler calls real models itself, each call admitted, routed and billed like any request.
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from lmops.protocol.chat import ChatCompletionRequest
from lmops.serving.context import RequestContext


class ChatHandler(Protocol):
    """Answers chat completion requests for one virtual model name."""

    @property
    def models(self) -> tuple[str, ...]:
        """The models it calls: a caller sees (and may use) the virtual model when it may use every one."""
        ...

    async def chat(self, req: ChatCompletionRequest, http: Request, ctx: RequestContext) -> Response:
        """The response to ``req`` (streamed or not), as ``InferenceService.chat`` would answer it."""
        ...
