"""Carry out chat, text-completion and embeddings requests through the router.

Applies the model's configured defaults, rewrites the model name for the upstream and
back, streams chunks as they arrive, and leaves one request record, metrics and a
settled cost for every request, whatever its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from lmops.config import EngineKind, ModelConfig
from lmops.engines.base import Body, Chunks, Engine
from lmops.ids import new_id
from lmops.observability.logging import request_fields_var
from lmops.observability.metrics import Metrics
from lmops.protocol import responses as R
from lmops.protocol.chat import ChatCompletionRequest
from lmops.protocol.completions import CompletionRequest
from lmops.protocol.embeddings import EmbeddingRequest
from lmops.protocol.errors import APIError, ClientClosed, InvalidRequest, UpstreamError, from_validation_error
from lmops.routing.router import Routed, Router, Target
from lmops.serving.context import Guard, RequestContext
from lmops.serving.disconnect import ClientGone, unless_disconnected
from lmops.serving.sse import EventStreamResponse
from lmops.serving.usage_check import plausible_usage
from lmops.serving.virtual import Admit, ChatHandler
from lmops.usage.batch_writer import BatchWriter

log = logging.getLogger("lmops.serving")

JSON = "application/json"
_DONE = b"data: [DONE]\n\n"


class InferenceService:
    def __init__(self, router: Router, metrics: Metrics, records: BatchWriter | None, guard: Guard):
        self.router = router
        self.metrics = metrics
        self.records = records
        self.guard = guard
        self.virtual: dict[str, ChatHandler] = {}  # virtual model name -> its handler (filled by the root)

    # -- entry points (one per API resource) ---------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, http: Request, ctx: RequestContext) -> Response:
        handler = self.virtual.get(req.model)
        if handler is not None:
            return await handler.chat(req, http, ctx)
        return await self._generate(req, http, ctx, _chat_call, _chat_stream, req.token_limit())

    async def completion(self, req: CompletionRequest, http: Request, ctx: RequestContext) -> Response:
        return await self._generate(req, http, ctx, _completion_call, _completion_stream, req.token_limit())

    async def embeddings(self, req: EmbeddingRequest, http: Request, ctx: RequestContext) -> Response:
        target = self.router.find(req.model)
        address(ctx, req.model, target)
        try:
            await self.guard.admit(http, ctx)
            target = self.router.resolve(req.model)
            text_model(target, req.model)
            body = req.to_wire()
            body["model"] = target.upstream_name
            routed = Routed()
            try:
                result = await self.router.call(req.model, _embeddings_call, body, routed)
            finally:
                ctx.replica = routed.replica
            result["model"] = req.model
            plausible_usage(ctx, result.get("usage"), self.metrics)
        except APIError as exc:
            self._failed(ctx, exc)
            raise
        except Exception as exc:
            raise self._crashed(ctx) from exc
        self.finish(ctx)
        return _json_response(result, ctx)

    async def open_chat_stream(self, body: Body, ctx: RequestContext, admit: Admit) -> AsyncIterator[Chunks]:
        """Open a streamed chat completion for a caller inside lmops (a virtual model's handler): the request is
        validated, gets the model's defaults and context check, is admitted by ``admit`` (the guard, for the
        caller) and routed (retry before the first byte), as on ``/v1``.

        A refusal or failure here is finished (recorded, settled) and raised. Otherwise the caller reads the
        chunks (they end with a usage chunk), counts their usage with ``plausible_usage`` and calls ``finish``.
        """
        ctx.stream = True
        try:
            model = str(body.get("model"))
            target = self.router.resolve(model)
            address(ctx, model, target)
            try:
                req = ChatCompletionRequest.model_validate({**body, "stream": True})
            except ValidationError as exc:
                raise from_validation_error(exc) from None
            wire = upstream_body(req, target)
            ctx.max_tokens = wire.get("max_completion_tokens") or wire.get("max_tokens")
            ctx.choices = req.choices()
            ctx.body_bytes = len(orjson.dumps(wire))
            await admit(ctx)
            routed = Routed()
            try:
                return await self.router.stream(model, _chat_stream, wire, routed)
            finally:
                ctx.replica = routed.replica
        except APIError as exc:
            self._failed(ctx, exc)
            raise
        except asyncio.CancelledError:  # the caller's client went away: settle what admission held
            self.finish(ctx, ClientClosed())
            raise

    # -- shared generation path ----------------------------------------------------------------
    async def _generate(self, req: ChatCompletionRequest | CompletionRequest, http: Request, ctx: RequestContext,
                        call: Any, stream: Any, limit: int | None) -> Response:
        ctx.stream = req.stream
        try:
            known = self.router.find(req.model)
            address(ctx, req.model, known)
            ctx.max_tokens = limit if limit is not None else (known.config.defaults.max_tokens if known else None)
            ctx.choices = req.choices()
            await self.guard.admit(http, ctx)  # first: who may ask which models exist
            target = self.router.resolve(req.model)
            body = upstream_body(req, target)
            routed = Routed()
            try:
                if req.stream:
                    chunks = await self.router.stream(req.model, stream, body, routed)
                elif target.config.engine in (EngineKind.embedded, EngineKind.hf):  # in-process: stop it
                    result = await unless_disconnected(http, self.router.call(req.model, call, body, routed))
                else:
                    result = await self.router.call(req.model, call, body, routed)
            finally:
                ctx.replica = routed.replica
            if not req.stream:
                result["model"] = req.model
                plausible_usage(ctx, result.get("usage"), self.metrics)
        except APIError as exc:
            self._failed(ctx, exc)
            raise
        except ClientGone:
            self.finish(ctx, ClientClosed())
            return Response(status_code=499)
        except Exception as exc:
            raise self._crashed(ctx) from exc
        if req.stream:
            events = self._events(ctx, chunks, req.model, req.wants_usage_chunk())
            return EventStreamResponse(events, [(b"x-request-id", ctx.request_id.encode("latin-1")),
                                                *(ctx.rate_headers or ())])
        self.finish(ctx)
        return _json_response(result, ctx)

    async def _events(self, ctx: RequestContext, batches: AsyncIterator[Chunks], model: str,
                      include_usage: bool) -> AsyncIterator[bytes]:
        """Relay engine chunks as SSE events, those that arrived together as one piece; count usage from the
        engine's final usage chunk.

        Without one (an upstream that ignores ``include_usage``, or a stream cut short), the
        completion is counted as the number of chunks with output delivered.
        """
        delivered = 0
        got_usage = completed = False
        failure: APIError | None = None
        try:
            async for chunks in batches:
                events: list[bytes] = []
                for chunk in chunks:
                    usage = chunk.get("usage")
                    if usage:
                        plausible_usage(ctx, usage, self.metrics)
                        got_usage = True
                    choices = chunk.get("choices")
                    if choices:
                        if _has_output(choices[0]):
                            delivered += 1
                            if ctx.ttft is None:
                                ctx.ttft = ctx.elapsed()
                        if usage and not include_usage:
                            chunk = {k: v for k, v in chunk.items() if k != "usage"}
                    elif not include_usage:
                        continue
                    chunk["model"] = model
                    events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
                if events:
                    yield b"".join(events)
            completed = True
            if include_usage and not got_usage:
                ctx.completion_tokens = delivered
                yield b"data: " + orjson.dumps(R.usage_chunk(ctx.request_id, int(time.time()), model,
                                                             _chunk_object(ctx), 0, delivered)) + b"\n\n"
            yield _DONE
        except APIError as exc:
            failure = exc
            yield b"data: " + orjson.dumps(exc.envelope()) + b"\n\n"
        except Exception as exc:  # noqa: BLE001 - a broken stream ends with an error event, never a crash
            log.exception("stream failed")
            failure = UpstreamError(f"The stream failed: {type(exc).__name__}")
            yield b"data: " + orjson.dumps(failure.envelope()) + b"\n\n"
        finally:
            await batches.aclose()  # type: ignore[attr-defined]  # stop the engine now, not at GC
            if not got_usage:
                ctx.completion_tokens = max(ctx.completion_tokens, delivered)
            if not completed and failure is None:
                ctx.extra["cancelled"] = True
                failure = ClientClosed()
            self.finish(ctx, failure)

    # -- accounting ----------------------------------------------------------------------------
    def _failed(self, ctx: RequestContext, exc: APIError) -> None:
        """Record a refused or failed request; its error response carries the guard's headers too."""
        self.finish(ctx, exc)
        for name, value in ctx.rate_headers or ():
            exc.headers.setdefault(name.decode(), value.decode())

    def _crashed(self, ctx: RequestContext) -> APIError:
        """A failure lmops did not foresee (a bug): logged with its traceback, and the request still settles and
        leaves its record, so that no reservation or parallel slot is held until its counter expires."""
        log.exception("the request failed")
        failure = APIError("The server failed to process the request.", code="internal_error")
        self.finish(ctx, failure)
        return failure

    def finish(self, ctx: RequestContext, error: APIError | None = None,
               into: list[dict[str, Any]] | None = None) -> None:
        """Record a finished request: metrics, the guard's settlement, and its record (billed if the guard says so).

        The record goes to the batched writer, or into ``into`` when the caller writes it itself: a batch
        worker commits it with the item's result, in one transaction (exactly-once billing).
        """
        if error is not None:
            ctx.status = error.status_code
            ctx.error = error.message
        latency = ctx.elapsed()
        public = ctx.public_model  # "model:adapter" for an adapter: records and metrics keep it apart
        model = public or "-"
        fields = request_fields_var.get()
        if fields is not None:  # an HTTP request: its one log line (api/middleware.py) carries these
            fields.update(endpoint=ctx.endpoint, model=public, replica=ctx.replica, status=ctx.status,
                          prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens, error=ctx.error)
        else:
            level = logging.WARNING if ctx.status >= 500 else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "request finished", extra={
                    "endpoint": ctx.endpoint, "model": public, "replica": ctx.replica, "status": ctx.status,
                    "latency_ms": round(latency * 1000, 3), "prompt_tokens": ctx.prompt_tokens,
                    "completion_tokens": ctx.completion_tokens, "error": ctx.error})
        self.metrics.observe(model, ctx.endpoint, ctx.status, latency, ctx.ttft, ctx.prompt_tokens,
                             ctx.completion_tokens)
        try:
            cost = self.guard.settle(ctx)
        except Exception:  # noqa: BLE001 - settlement must never fail a served request
            log.exception("settling the request failed")
            cost = None
        if self.records is not None or into is not None:
            now = datetime.now(timezone.utc)
            billed = ctx.principal if cost is not None else None
            row = {
                "id": new_id(),
                "request_id": ctx.request_id,
                "created_at": now,
                "endpoint": ctx.endpoint,
                "model": ctx.model,
                "adapter": ctx.extra.get("adapter"),
                "replica": ctx.replica,
                "stream": ctx.stream,
                "prompt_tokens": ctx.prompt_tokens,
                "completion_tokens": ctx.completion_tokens,
                "latency_ms": latency * 1000.0,
                "ttft_ms": ctx.ttft * 1000.0 if ctx.ttft is not None else None,
                "status": ctx.status,
                "error": ctx.error,
                "team_id": billed.team_id if billed else None,
                "user_id": billed.user_id if billed else None,
                "key_id": billed.key_id if billed else None,
                "cost_usd": cost,
                "day": now.date() if billed else None,
            }
            if into is not None:
                into.append(row)
            elif self.records is not None:
                self.records.add(row)


def _json_response(result: Body, ctx: RequestContext) -> Response:
    response = Response(orjson.dumps(result), media_type=JSON)
    if ctx.rate_headers:
        response.raw_headers += ctx.rate_headers  # encoded once, by the guard
    return response


def _has_output(choice: Body) -> bool:
    """Whether a stream chunk's choice carries generated output: text, a tool call, or reasoning (vLLM's reasoning
    parsers send it as ``reasoning_content``, newer ones as ``reasoning``) all count for time to first token."""
    delta = choice.get("delta")
    if delta is None:
        return bool(choice.get("text"))
    return bool(delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content")
                or delta.get("reasoning") or delta.get("refusal"))


def _chunk_object(ctx: RequestContext) -> str:
    return "chat.completion.chunk" if ctx.endpoint == "chat.completions" else "text_completion"


def address(ctx: RequestContext, requested: str, target: Target | None) -> None:
    """Name the request's model in ``ctx``: for ``"<model>:<adapter>"`` the model, and the adapter in
    ``ctx.extra["adapter"]`` (what access rules, the ledger and ``ctx.public_model`` read); any other
    name, known or not, as it was asked for."""
    if target is not None and target.adapter is not None:
        ctx.model = target.deployment.name
        ctx.extra["adapter"] = target.adapter.name
    else:
        ctx.model = requested


def upstream_body(req: ChatCompletionRequest | CompletionRequest, target: Target) -> Body:
    """The request as the upstream should see it: its model (or adapter) name, configured defaults applied."""
    model = text_model(target, req.model)
    body = req.to_wire()
    body["model"] = target.upstream_name
    for key, value in model.defaults.model_dump(exclude_none=True).items():
        body.setdefault(key, value)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and limit > model.context_length:
        raise InvalidRequest(
            f"max_tokens ({limit}) exceeds the context length of model '{req.model}' ({model.context_length}).",
            param="max_tokens", code="context_length_exceeded")
    return body


def text_model(target: Target, requested: str) -> ModelConfig:
    """The configuration of the model serving ``target``: 400 for an image model (it makes no text)."""
    model = target.config
    if model.kind != "text":
        raise InvalidRequest(f"The model '{requested}' generates images; ask it at /v1/images/generations.",
                             param="model", code="unsupported_model_capability")
    return model


def _chat_call(engine: Engine, body: Body) -> Any:
    return engine.chat_completion(body)


def _chat_stream(engine: Engine, body: Body) -> AsyncIterator[Chunks]:
    return engine.stream_chat_completion(body)


def _completion_call(engine: Engine, body: Body) -> Any:
    return engine.completion(body)


def _completion_stream(engine: Engine, body: Body) -> AsyncIterator[Chunks]:
    return engine.stream_completion(body)


def _embeddings_call(engine: Engine, body: Body) -> Any:
    return engine.embeddings(body)


