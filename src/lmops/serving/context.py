"""Per-request context, and the guard that admits requests and settles their cost."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request


@dataclass
class RequestContext:
    """What one API request is and how it went; filled as it is served."""

    request_id: str
    endpoint: str
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    started: float = field(default_factory=time.perf_counter)
    principal: Any = None  # set by the guard (access control)
    reservation: Any = None  # set by the guard (budget reserved before the call)
    replica: str | None = None
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Guard(Protocol):
    """Admits a request before it runs (raise an APIError to refuse) and settles it after."""

    async def admit(self, request: Request, ctx: RequestContext) -> None: ...

    def settle(self, ctx: RequestContext) -> None: ...


class OpenGuard:
    """No access control: every request is admitted (the laptop default before keys exist)."""

    async def admit(self, request: Request, ctx: RequestContext) -> None:
        return None

    def settle(self, ctx: RequestContext) -> None:
        return None
