"""Per-request context, and the guard that admits requests and settles their cost."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request

RawHeaders = list[tuple[bytes, bytes]]  # (lower-case name, value), as ASGI sends them


@dataclass(frozen=True)
class Principal:
    """Who is calling: the team (tenant) owns what the call creates; scopes say what it may do."""

    team_id: str
    user_id: str | None = None
    key_id: str | None = None
    role: str = "member"  # admin | team_admin | member
    scopes: frozenset[str] = frozenset({"inference", "batch"})

    def can(self, scope: str) -> bool:
        return scope in self.scopes


ANONYMOUS = Principal(team_id="default", role="admin", scopes=frozenset({"inference", "batch", "admin"}))


@dataclass
class RequestContext:
    """What one API request is and how it went; filled as it is served."""

    request_id: str
    endpoint: str
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None  # per choice
    choices: int = 1  # ``n`` (times the prompts of a completion): budgets reserve max_tokens for each
    body_bytes: int = 0  # the request body's size: a bound on its prompt tokens (budgets reserve it)
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None  # set by the guard (access control)
    reservation: Any = None  # set by the guard (budget reserved before the call)
    replica: str | None = None
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0  # images generated (billed at the model's price per image)
    status: int = 200
    error: str | None = None
    rate_headers: RawHeaders | None = None  # set by the guard (x-ratelimit-*): added to the response, errors too
    extra: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def public_model(self) -> str | None:
        """The model as the client named it: ``model``, or ``model:adapter`` when an adapter serves it."""
        adapter = self.extra.get("adapter")
        return f"{self.model}:{adapter}" if adapter and self.model else self.model


class Guard(Protocol):
    """Admits a request before it runs (raise an APIError to refuse) and settles it after."""

    async def authenticate(self, request: Request, scope: str) -> Principal:
        """Who calls, for routes that are not inference (files, batches, admin); raise 401/403."""
        ...

    async def admit(self, request: Request, ctx: RequestContext) -> None:
        """Authenticate and admit an inference request for ``ctx.model``; set ``ctx.principal``."""
        ...

    async def admit_work(self, ctx: RequestContext, body_bytes: int) -> None:
        """Admit a call made for ``ctx.principal`` without an HTTP request (batch work); raise to refuse."""
        ...

    def settle(self, ctx: RequestContext) -> float | None:
        """Release what admission held and book the real usage; the request's cost in dollars if it is billed
        (its record then carries the principal and the cost: the ledger), else None."""
        ...

    async def allowed_models(self, request: Request) -> Callable[[str], bool]:
        """Authenticate as ``authenticate(request, "inference")`` does, and tell which public model names
        (``model`` or ``model:adapter``) the caller may use: the model list shows it only those."""
        ...


class OpenGuard:
    """No access control: every request is admitted as the anonymous admin of team "default"."""

    async def authenticate(self, request: Request, scope: str) -> Principal:
        return ANONYMOUS

    async def admit(self, request: Request, ctx: RequestContext) -> None:
        ctx.principal = ANONYMOUS

    async def admit_work(self, ctx: RequestContext, body_bytes: int) -> None:
        return None

    def settle(self, ctx: RequestContext) -> float | None:
        return None

    async def allowed_models(self, request: Request) -> Callable[[str], bool]:
        return _every_model


def _every_model(name: str) -> bool:
    return True
