"""Model calls that lmops makes inside one turn for a caller (the assistant's function and default models, the
chat's summaries): each one a request of its own, admitted, routed, recorded and billed to the caller like a
``/v1`` call (``InferenceService.open_chat_stream`` and ``finish``), and summed into the turn's usage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmops.protocol.errors import APIError
from lmops.serving.context import RequestContext
from lmops.serving.inference import InferenceService
from lmops.serving.usage_check import plausible_usage

@dataclass
class Usage:
    """What a turn's inner calls used, together."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def wire(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """A prompt's tokens when the engine did not say (a stream closed early): a token per three characters of text
    and four per message."""
    total = 0
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else str(content or "")
        total += len(text) // 3 + 4
    return total


def settle(inference: InferenceService, ctx: RequestContext, usage: Any, delivered: int, prompt: list[dict[str, Any]],
           failure: APIError | None, total: Usage) -> None:
    """Count a finished inner call (its usage chunk, else the chunks delivered and the prompt estimated), record and
    bill it, and add it to the turn's ``total``."""
    if usage:
        plausible_usage(ctx, usage, inference.metrics)
    else:
        ctx.completion_tokens = max(ctx.completion_tokens, delivered)
        ctx.prompt_tokens = ctx.prompt_tokens or estimate_tokens(prompt)
    inference.finish(ctx, failure)
    total.prompt_tokens += ctx.prompt_tokens
    total.completion_tokens += ctx.completion_tokens
