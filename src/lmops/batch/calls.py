"""Call a model through the gateway's router, as a batch worker: OpenAI wire format in and out.

Every call is recorded and billed like an API request (request record, metrics, the guard's
settlement) under the job's team. A worker's calls go through an ``ItemCaller``, which keeps their
records for the worker to commit with the item's result (exactly-once billing); other callers' records
go to the gateway's batched writer. An engine that is busy (429), or a model whose replicas are all
ejected for now (503), is back-pressure: the call waits and tries again (the item's lease is kept
alive by heartbeats), it never spends one of the item's attempts. Other failures raise ``CallFailed``; 5xx-class ones
are ``retryable`` (the item is retried later with backoff), 4xx ones are final.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import orjson

from pydantic import BaseModel, ValidationError

from lmops.ids import new_id
from lmops.engines.base import Body, Engine
from lmops.protocol.chat import ChatCompletionRequest
from lmops.protocol.completions import CompletionRequest, choices_in
from lmops.protocol.embeddings import EmbeddingRequest
from lmops.protocol.errors import APIError, NoHealthyReplica, Overloaded, RateLimited, from_validation_error
from lmops.routing.router import Routed
from lmops.serving.context import Principal, RequestContext
from lmops.serving.inference import address, text_model, upstream_body
from lmops.serving.usage_check import plausible_usage

if TYPE_CHECKING:
    from lmops.core import Core

MAX_BUSY_WAIT = 5.0
BUDGET_RECHECKS = 10  # a spent budget fails the call after this many re-checks ...
BUDGET_RECHECK_WAIT = 0.5  # ... this many seconds apart


@dataclass(frozen=True)
class Endpoint:
    path: str
    name: str  # request-record endpoint
    schema: type[BaseModel]

    async def send(self, engine: Engine, body: Body) -> Body:
        if self.schema is ChatCompletionRequest:
            return await engine.chat_completion(body)
        if self.schema is CompletionRequest:
            return await engine.completion(body)
        return await engine.embeddings(body)


ENDPOINTS = {e.path: e for e in (
    Endpoint("/v1/chat/completions", "batch.chat.completions", ChatCompletionRequest),
    Endpoint("/v1/completions", "batch.completions", CompletionRequest),
    Endpoint("/v1/embeddings", "batch.embeddings", EmbeddingRequest),
)}


class CallFailed(Exception):
    """A model call failed; ``response`` is the OpenAI response object (status_code, body) when there was one."""

    def __init__(self, code: str, message: str, *, retryable: bool, status: int | None = None,
                 body: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.message, self.retryable, self.status, self.body = code, message, retryable, status, body


@dataclass
class CallResult:
    body: Body
    request_id: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float


def validate_request(endpoint: Endpoint, body: Any) -> BaseModel:
    """The body as the endpoint's request model; InvalidRequest naming the field otherwise."""
    try:
        req = endpoint.schema.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    if getattr(req, "stream", False):
        from lmops.protocol.errors import InvalidRequest

        raise InvalidRequest("Batch requests cannot stream.", param="stream")
    return req


@dataclass
class _Checked:
    """A request body already validated (at intake, or built by a workflow step): what ``upstream_body``
    reads from a request model, without validating it again on the hot path."""

    body: Body

    @property
    def model(self) -> str:
        return self.body["model"]

    def to_wire(self) -> Body:
        return dict(self.body)


class Caller(Protocol):
    """What a workflow step calls models with."""

    async def call(self, team_id: str, path: str, body: Any, *, checked: bool = False) -> CallResult: ...


class ModelCaller:
    """Calls models with at most ``concurrency`` requests in flight per model (per worker process)."""

    def __init__(self, core: "Core", concurrency: int, per_model: dict[str, int] | None = None):
        self.core = core
        self._limits = {d.name: asyncio.Semaphore((per_model or {}).get(d.name, concurrency))
                        for d in core.router.deployments}

    async def call(self, team_id: str, path: str, body: Any, *, checked: bool = False,
                   records: list[Body] | None = None) -> CallResult:
        """Call the model ``body`` names; ``checked``: the body was validated already (skip pydantic).

        ``records``: where the call's request record goes (instead of the batched writer), whatever its outcome.
        """
        endpoint = ENDPOINTS[path]
        ctx = RequestContext(request_id=new_id("batch_req_"), endpoint=endpoint.name,
                             principal=Principal(team_id=team_id))
        svc = self.core
        try:
            req = _Checked(body) if checked else validate_request(endpoint, body)
            model: str = req.model  # type: ignore[union-attr]
            ctx.model = model
            target = svc.router.resolve(model)  # "<model>:<adapter>" too
            address(ctx, model, target)
            if endpoint.schema is EmbeddingRequest:
                text_model(target, model)  # an image model: a 400 (chat and completions: in upstream_body)
                wire = req.to_wire()  # type: ignore[union-attr]
                wire["model"] = target.upstream_name
            else:
                wire = upstream_body(req, target)  # type: ignore[arg-type]
                ctx.max_tokens = wire.get("max_completion_tokens") or wire.get("max_tokens")
                ctx.choices = choices_in(wire)
        except APIError as exc:
            svc.inference.finish(ctx, exc, records)
            raise CallFailed(exc.code or "invalid_request", exc.message, retryable=False,
                             status=exc.status_code, body=exc.envelope()) from None
        async with self._limits[target.deployment.name]:  # a model's adapters share its engines' limit
            await self._admit(ctx, wire, records)
            result = await self._send(ctx, endpoint, model, wire, records)
        result["model"] = model
        plausible_usage(ctx, result.get("usage"), svc.metrics)
        svc.inference.finish(ctx, None, records)
        return CallResult(result, ctx.request_id, ctx.prompt_tokens, ctx.completion_tokens, ctx.elapsed() * 1000.0)

    async def _admit(self, ctx: RequestContext, wire: Body, records: list[Body] | None) -> None:
        """The team's model rules, limits and budgets, as for its interactive requests.

        A rate or parallel limit is back-pressure (wait, then ask again); a budget that stays spent
        over several re-checks, or a refused model, fails the call without retries.
        """
        guard = self.core.guard
        size = len(orjson.dumps(wire))
        budget_refusals = 0
        while True:
            try:
                await guard.admit_work(ctx, size)
                return
            except RateLimited as exc:
                if exc.code == "budget_exceeded":
                    # Reservations of calls in flight may be what fills the budget: they settle to less.
                    budget_refusals += 1
                    if budget_refusals > BUDGET_RECHECKS:
                        self._refused(ctx, exc, records)
                    await asyncio.sleep(BUDGET_RECHECK_WAIT)
                    continue
                await asyncio.sleep(min(float(exc.headers.get("Retry-After", 1)), MAX_BUSY_WAIT))
            except APIError as exc:
                if exc.status_code == 503:  # limits cannot be checked right now
                    await asyncio.sleep(1.0)
                    continue
                self._refused(ctx, exc, records)

    def _refused(self, ctx: RequestContext, exc: APIError, records: list[Body] | None) -> NoReturn:
        self.core.inference.finish(ctx, exc, records)
        raise CallFailed(exc.code or exc.error_type, exc.message, retryable=False, status=exc.status_code,
                         body=exc.envelope())

    async def _send(self, ctx: RequestContext, endpoint: Endpoint, model: str, wire: Body,
                    records: list[Body] | None) -> Body:
        wait = 0.05
        while True:
            routed = Routed()
            try:
                return await self.core.router.call(model, endpoint.send, wire, routed)
            except (Overloaded, NoHealthyReplica):
                await asyncio.sleep(wait)  # back-pressure (or every replica ejected for now): not a failure
                wait = min(wait * 2, MAX_BUSY_WAIT)
            except APIError as exc:
                ctx.replica = routed.replica
                self.core.inference.finish(ctx, exc, records)
                raise CallFailed(exc.code or exc.error_type, exc.message, retryable=exc.status_code >= 500,
                                 status=exc.status_code, body=exc.envelope()) from None
            finally:
                ctx.replica = routed.replica


class ItemCaller:
    """One batch item's calls: their request records wait in ``records`` until the worker commits them in the
    transaction that settles (or checkpoints) the item, so that a worker killed before then bills nothing and
    the item's next try bills its own calls: the ledger holds one row per call of the try that counted."""

    def __init__(self, caller: ModelCaller):
        self.caller = caller
        self.records: list[Body] = []

    async def call(self, team_id: str, path: str, body: Any, *, checked: bool = False) -> CallResult:
        return await self.caller.call(team_id, path, body, checked=checked, records=self.records)

    def take(self) -> list[Body]:
        """The records kept so far, handed over (the caller commits them or gives them back)."""
        rows, self.records = self.records, []
        return rows
