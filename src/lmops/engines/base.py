"""The one Engine interface every inference engine implements.

Requests and responses are OpenAI wire-format dicts: ``body`` is the request as the
upstream should see it (upstream model name, defaults applied). Streams yield ``Chunks``:
the chunk dicts that became available together (those of one network read of an upstream,
a token's of the embedded engine), never an empty list, so that a burst crosses the router
and the API layer, and reaches the client, as one piece rather than one chunk at a time.
A stream always ends with a usage chunk (``choices == []``); the API layer decides
whether the client sees it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

Body = dict[str, Any]
Chunks = list[Body]  # stream chunks that arrived together, in order


class EngineError(Exception):
    """An engine failed to serve a request. ``retryable`` failures may go to another replica."""

    retryable = True

    def __init__(self, message: str, *, status: int = 502, body: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body


class EngineUnavailable(EngineError):
    """Could not reach the engine (connection refused, reset before any byte)."""


class EngineConnectionLost(EngineError):
    """The exchange broke after the request was handed to a connection (closed, reset, or an answer that is not
    HTTP): the engine may have received it and be generating, so it is sent again nowhere, neither on this
    replica nor on another (a second generation would be billed twice). Held against the replica's health."""

    retryable = False


class EngineTimeout(EngineError):
    """The engine did not answer in time."""


class EngineRejected(EngineError):
    """The engine refused the request itself (4xx): another replica would refuse it too."""

    retryable = False


class EngineFault(EngineError):
    """The engine failed on this request alone: an in-process engine whose model is still loaded and serving.
    Not retried elsewhere, and not held against the replica's health (one odd request must not eject a model)."""

    retryable = False


class EngineBusy(EngineError):
    """The engine's own queue is full; the client should come back later."""

    retryable = False

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message, status=429)
        self.retry_after = retry_after


class Unsupported(EngineError):
    retryable = False

    def __init__(self, what: str):
        super().__init__(f"this model does not serve {what}", status=400)


class Engine(ABC):
    """An inference engine: one replica of a model."""

    kind: str = "engine"
    endpoint: str = "local"  # shown in request records and metrics as the replica

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load or connect; called once before serving."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections, threads and memory."""

    @abstractmethod
    async def health(self) -> bool:
        """True when the engine can take requests now."""

    async def chat_completion(self, body: Body) -> Body:
        raise Unsupported("chat completions")

    def stream_chat_completion(self, body: Body) -> AsyncIterator[Chunks]:
        raise Unsupported("chat completions")

    async def completion(self, body: Body) -> Body:
        raise Unsupported("text completions")

    def stream_completion(self, body: Body) -> AsyncIterator[Chunks]:
        raise Unsupported("text completions")

    async def embeddings(self, body: Body) -> Body:
        raise Unsupported("embeddings")

    async def images(self, body: Body) -> Body:
        """Generate images (OpenAI ``/images/generations``): every item of the answer's ``data`` holds its image
        as ``b64_json``, whatever the upstream answered with."""
        raise Unsupported("image generation")

    def queue_depth(self) -> int:
        """Requests waiting inside the engine (embedded engines only)."""
        return 0
