"""Stream a model's answer into a conversation, through the gateway's own road.

The call takes the inference path's pieces, not a copy of them: the model's defaults and context check
(``upstream_body``), admission by the guard (``admit`` for an API key, ``admit_work`` for a signed-in user:
the team's model rules, limits and budgets), the router (replica choice, retry before the first byte), and
``InferenceService.finish`` (metrics, settlement, the request record billed to the user's team and user).

A generation ends one of three ways: complete; stopped (``stop`` was called, or the client went away: the
upstream stream is closed at once, so the engine stops, and the partial answer is kept); or failed. Usage comes
from the engine's final usage chunk; a stream cut short has none, so its completion tokens are the content
chunks delivered (one token each from vLLM, llama.cpp and the embedded engine) and its prompt tokens are
estimated from the text sent (``history.estimate_tokens``).

A virtual model (the assistant) is opened through its handler (``ChatHandler.open_stream``) with the same
admission; its inner calls are recorded and billed by themselves, so the chat's own context for the answer is
never recorded (``Generation.recorded``). Its plan (function model, tool) runs while the answer opens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from lmops.chat.history import estimate_tokens
from lmops.chat.identity import ChatUser
from lmops.engines.base import Body, Chunks, Engine
from lmops.ids import new_id
from lmops.observability.logging import request_id_var
from lmops.protocol.chat import ChatCompletionRequest
from lmops.protocol.errors import APIError, UpstreamError, from_validation_error
from lmops.routing.router import Routed
from lmops.serving.context import RequestContext
from lmops.serving.inference import address, upstream_body
from lmops.serving.usage_check import plausible_usage
from lmops.serving.virtual import Admit

if TYPE_CHECKING:
    from lmops.core import Core

log = logging.getLogger("lmops.chat")

ENDPOINT = "chat.messages"  # the request records' endpoint of chat answers
Save = Callable[[str, str, int, int], Awaitable[dict[str, Any]]]  # (text, status, prompt, completion) -> final event


class Conflict(APIError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class Stopped(APIError):
    status_code = 499
    error_type = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The answer was stopped before it ended.")


@dataclass
class Generation:
    ctx: RequestContext
    model: str  # the public name the user asked for
    chunks: AsyncIterator[Chunks]
    prompt_estimate: int
    recorded: bool = True  # False for a virtual model: its inner calls left their own records
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def finish(self, core: "Core", error: APIError | None) -> None:
        """Record and settle the call (a virtual model's answer has nothing of its own to record)."""
        if self.recorded:
            core.inference.finish(self.ctx, error)


def call_context(user: ChatUser, endpoint: str) -> RequestContext:
    """A model call made for a chat user: a signed-in user is its principal; a key's is set when it is admitted."""
    return RequestContext(request_id=request_id_var.get() or new_id("chatreq_"), endpoint=endpoint, stream=True,
                          principal=None if user.via_key else user.principal)


def admission(core: "Core", user: ChatUser, http: Request) -> Admit:
    """How the user's calls are admitted: by the guard as ``/v1`` requests for an API key, else as work for the
    signed-in user's team (its model rules, limits and budgets); inner calls of a virtual model included."""

    async def admit(ctx: RequestContext) -> None:
        if user.via_key:
            await core.guard.admit(http, ctx)
        else:
            ctx.principal = user.principal
            await core.guard.admit_work(ctx, ctx.body_bytes)

    return admit


def _stream(engine: Engine, body: Body) -> AsyncIterator[Chunks]:
    return engine.stream_chat_completion(body)


async def _nothing() -> AsyncIterator[Chunks]:
    """The chunks of an answer stopped before it opened."""
    return
    yield


def _estimate(messages: list[dict[str, Any]]) -> int:
    return sum(estimate_tokens(str(m.get("content") or "")) for m in messages)


def _event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class Answerer:
    """The answers being generated in this process, one per conversation at most."""

    def __init__(self, core: "Core"):
        self.core = core
        self.running: dict[str, Generation] = {}

    async def open(self, user: ChatUser, http: Request, conversation_id: str, model: str, params: dict[str, Any],
                   messages: list[dict[str, Any]]) -> Generation:
        """Admit the call and open the upstream stream (a failure here is an error answer; nothing is stored)."""
        self.check_free(conversation_id)
        svc = self.core
        ctx = call_context(user, ENDPOINT)
        admit = admission(svc, user, http)
        handler = svc.inference.virtual.get(model)
        if handler is not None:  # the assistant: its inner calls are admitted, recorded and billed by themselves
            ctx.model = model
            return await self._open_virtual(conversation_id, Generation(ctx, model, _nothing(), _estimate(messages),
                                                                        recorded=False),
                                            handler.open_stream({"model": model, "messages": messages, **params},
                                                                ctx, admit))
        try:
            target = svc.router.resolve(model)
            address(ctx, model, target)
            try:
                req = ChatCompletionRequest.model_validate({"model": model, "messages": messages, "stream": True,
                                                            **params})
            except ValidationError as exc:
                raise from_validation_error(exc) from None
            body = upstream_body(req, target)
            ctx.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            ctx.body_bytes = len(orjson.dumps(body))
            await admit(ctx)
            routed = Routed()
            try:
                chunks = await svc.router.stream(model, _stream, body, routed)
            finally:
                ctx.replica = routed.replica
        except APIError as exc:
            svc.inference.finish(ctx, exc)
            raise
        return await self._register(conversation_id, Generation(ctx, model, chunks, _estimate(messages)))

    async def _open_virtual(self, conversation_id: str, generation: Generation,
                            opening: Awaitable[AsyncIterator[Chunks]]) -> Generation:
        """Open a virtual model's answer, registered at once: its plan (the function model, a tool) may take a
        while, and Stop meanwhile cancels it (the generation then streams nothing and is stored as stopped)."""
        self.running[conversation_id] = generation
        task = asyncio.ensure_future(opening)
        stopper = asyncio.ensure_future(generation.stop.wait())
        try:
            await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
            with suppress(asyncio.CancelledError):
                generation.chunks = await task
        except BaseException:
            task.cancel()
            self.running.pop(conversation_id, None)
            generation.finished.set()
            raise
        finally:
            stopper.cancel()
        return generation

    async def _register(self, conversation_id: str, generation: Generation) -> Generation:
        if conversation_id in self.running:  # another request opened one meanwhile
            await self._close(generation, Conflict("An answer is being generated in this conversation."))
            raise Conflict("An answer is being generated in this conversation: stop it first.")
        self.running[conversation_id] = generation
        return generation

    def check_free(self, conversation_id: str) -> None:
        """Refuse a second answer while one is being generated in the conversation."""
        if conversation_id in self.running:
            raise Conflict("An answer is being generated in this conversation: stop it first.")

    async def abandon(self, conversation_id: str, generation: Generation, error: APIError) -> None:
        """Close a generation that will not be streamed (storing the question failed)."""
        self.running.pop(conversation_id, None)
        await self._close(generation, error)

    async def _close(self, generation: Generation, error: APIError) -> None:
        with suppress(Exception):
            await generation.chunks.aclose()  # type: ignore[attr-defined]
        generation.finish(self.core, error)
        generation.finished.set()

    async def stop(self, conversation_id: str, wait: float = 10.0) -> bool:
        """Stop the conversation's answer; True once it is stopped and stored, False if none was running."""
        generation = self.running.get(conversation_id)
        if generation is None:
            return False
        generation.stop.set()
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(generation.finished.wait(), wait)
        return True

    def events(self, conversation_id: str, generation: Generation, save: Save) -> "Events":
        return Events(self._relay(conversation_id, generation, save),
                      lambda: self._unstarted(conversation_id, generation, save))

    async def _unstarted(self, conversation_id: str, generation: Generation, save: Save) -> None:
        self.running.pop(conversation_id, None)
        await self._close(generation, Stopped())
        with suppress(Exception):
            await save("", "stopped", generation.prompt_estimate, 0)

    async def _relay(self, conversation_id: str, g: Generation, save: Save) -> AsyncIterator[bytes]:
        """Forward the upstream's chunks as they come; store the answer however it ends, then the final event."""
        ctx, parts = g.ctx, []
        delivered, got_usage, status = 0, False, "complete"
        failure: APIError | None = None
        final: dict[str, Any] | None = None
        stopper = asyncio.ensure_future(g.stop.wait())
        pending: asyncio.Future[Chunks] | None = None
        try:
            while True:
                if g.stop.is_set():  # before the first chunk too: stopped while a virtual model planned
                    status = "stopped"
                    break
                pending = asyncio.ensure_future(anext(g.chunks))  # type: ignore[arg-type]
                await asyncio.wait((pending, stopper), return_when=asyncio.FIRST_COMPLETED)
                if not pending.done():
                    status = "stopped"
                    break
                try:
                    batch = pending.result()
                except StopAsyncIteration:
                    break
                pending = None
                events: list[bytes] = []
                for chunk in batch:
                    usage = chunk.get("usage")
                    if usage:
                        plausible_usage(ctx, usage, self.core.metrics)
                        got_usage = True
                    choices = chunk.get("choices")
                    if not choices:
                        continue
                    text = (choices[0].get("delta") or {}).get("content")
                    if text:
                        parts.append(text)
                        delivered += 1
                        if ctx.ttft is None:
                            ctx.ttft = ctx.elapsed()
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}
                    chunk["model"] = g.model
                    events.append(_event(chunk))
                if events:
                    yield b"".join(events)
        except asyncio.CancelledError:
            status = "stopped"  # the client went away
            raise
        except APIError as exc:
            status, failure = "error", exc
        except Exception:  # noqa: BLE001 - a broken stream ends with an error event, never a crash
            log.exception("chat stream failed")
            status, failure = "error", UpstreamError("The answer's stream failed.")
        finally:
            stopper.cancel()
            if pending is not None and not pending.done():
                pending.cancel()
                with suppress(BaseException):
                    await pending
            with suppress(Exception):
                await g.chunks.aclose()  # type: ignore[attr-defined]  # the engine stops now
            if not got_usage:
                ctx.completion_tokens = max(ctx.completion_tokens, delivered)
                ctx.prompt_tokens = ctx.prompt_tokens or g.prompt_estimate
            self.running.pop(conversation_id, None)
            g.finish(self.core, failure or (Stopped() if status == "stopped" else None))
            try:
                final = await asyncio.shield(save("".join(parts), status, ctx.prompt_tokens, ctx.completion_tokens))
            except Exception:  # noqa: BLE001 - the answer was streamed; say it could not be kept
                log.exception("could not store a chat answer")
            g.finished.set()
        if failure is not None:
            yield _event(failure.envelope())
        yield _event(final or UpstreamError("The answer could not be stored.").envelope())
        yield b"data: [DONE]\n\n"


class Events:
    """The SSE events of one answer; closed before its first event (the client left at once), it still settles
    the call and stores the (empty) stopped answer."""

    def __init__(self, relay: AsyncIterator[bytes], unstarted: Callable[[], Awaitable[None]]):
        self._relay = relay
        self._unstarted = unstarted
        self._started = False

    def __aiter__(self) -> "Events":
        return self

    async def __anext__(self) -> bytes:
        self._started = True
        return await anext(self._relay)

    async def aclose(self) -> None:
        if not self._started:
            self._started = True
            await self._unstarted()
        await self._relay.aclose()  # type: ignore[attr-defined]
