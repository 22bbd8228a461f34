"""The assistant: a virtual model (``assistant.name``) answered on ``/v1/chat/completions`` and in the web chat.

For each request: the user's latest message alone goes to the function model with the tools (``tool_choice``
"required"), streamed, and its stream is read just far enough (``router.decide``). Text, or a call of ``none``:
the default model answers at once. A tool call: the arguments are checked and the tool run
(``ToolRegistry.call``); arguments that do not fit are sent back to the function model with the error, at most
``reasks`` times, after which the user is told the question could not be handled. A tool's failure (not
configured, unreachable...) is told to the user as it is, and so is an image (the image tool's answer is its
markdown image link and source line: no model writes image links). Any other result goes to the default model
as context, and its answer ends with the source line (``history.with_source``). The conversation reaches the
default model without earlier source lines and image links (``history.clean_history``).

Every inner call is admitted for the caller by the guard (its key must allow both models; for a user signed in
to the web chat, the team's rules), routed, recorded and billed like a ``/v1`` call; the client's usage is their
sum. ``open`` is the one path of a turn: ``chat`` answers ``/v1`` with it, ``open_stream`` the web chat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from lmops.assistant.calls import ANSWER_ENDPOINT, FUNCTION_ENDPOINT
from lmops.assistant.history import clean_history, latest_user_message, tool_context, with_source, with_system
from lmops.assistant.reply import Reply, collect, events, json_response
from lmops.assistant.router import Decision, decide
from lmops.assistant.tools.base import Caller, ToolArgumentsError
from lmops.assistant.tools.registry import ToolRegistry
from lmops.config import AssistantConfig
from lmops.engines.base import Body, Chunks
from lmops.observability.logging import request_fields_var
from lmops.protocol.chat import ChatCompletionRequest
from lmops.protocol.errors import APIError, ClientClosed, InvalidRequest, UpstreamError, from_validation_error
from lmops.serving.context import RawHeaders, RequestContext
from lmops.serving.disconnect import ClientGone, unless_disconnected
from lmops.serving.inference import InferenceService
from lmops.serving.inner_calls import Usage, settle
from lmops.serving.sse import EventStreamResponse
from lmops.serving.virtual import Admit

log = logging.getLogger("lmops.assistant")

FUNCTION_PROMPT = ("Call the function that answers the user's message. If no function is needed, or none fits, "
                   "call the function none.")
_NOT_FORWARDED = {"model", "messages", "stream", "stream_options", "n"}  # the rest goes to the default model
_CLIENT_TOOLS = ("tools", "tool_choice", "functions", "function_call")


@dataclass
class Answer:
    """An opened answer: its chunks (``Reply.forward`` or ``Reply.fixed``), the turn's usage (complete once the
    chunks are read), and the default model's rate-limit headers."""

    reply: Reply
    chunks: AsyncIterator[Chunks]
    usage: Usage
    rate_headers: RawHeaders = field(default_factory=list)


@dataclass
class Plan:
    """What the default model is told (``context``, a tool's result) and cites (``source``); or ``reply``, the whole
    answer, when no model should write it."""

    context: str | None = None
    source: str | None = None
    reply: str | None = None


class Assistant:
    """The ``ChatHandler`` of the assistant's model name (``serving/virtual.py``)."""

    def __init__(self, config: AssistantConfig, inference: InferenceService, tools: ToolRegistry):
        if config.function_model is None or config.default_model is None:
            raise ValueError("the assistant needs assistant.function_model and assistant.default_model")
        self.name = config.name
        self.function_model = config.function_model
        self.default_model = config.default_model
        self.reasks = config.reasks
        self.detect_tokens = config.detect_tokens
        self.inference = inference
        self.tools = tools

    @property
    def models(self) -> tuple[str, ...]:
        return (self.function_model, self.default_model)

    async def chat(self, req: ChatCompletionRequest, http: Request, ctx: RequestContext) -> Response:
        guard = self.inference.guard

        async def admit(inner: RequestContext) -> None:
            await guard.admit(http, inner)

        try:  # a client that leaves stops the function model and the tool (the answer's stream stops by itself)
            answer = await unless_disconnected(http, self.open(req, ctx, admit))
        except ClientGone:
            return Response(status_code=499)
        headers = [(b"x-request-id", ctx.request_id.encode("latin-1")), *answer.rate_headers]
        if req.stream:
            return EventStreamResponse(events(answer.chunks, req.wants_usage_chunk()), headers)
        try:
            completion = await unless_disconnected(http, collect(answer.reply, answer.chunks, answer.usage))
        except ClientGone:
            return Response(status_code=499)
        return json_response(completion, answer.rate_headers)

    async def open_stream(self, body: Body, ctx: RequestContext, admit: Admit) -> AsyncIterator[Chunks]:
        """The answer's chunks for a caller inside lmops (``ChatHandler.open_stream``)."""
        try:
            req = ChatCompletionRequest.model_validate({**body, "model": self.name, "stream": True})
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        return (await self.open(req, ctx, admit)).chunks

    async def open(self, req: ChatCompletionRequest, ctx: RequestContext, admit: Admit) -> Answer:
        """Plan the turn (function model, tool), then open the answer: the default model's stream, or a fixed
        reply. Every caller's path (``chat`` on ``/v1``, ``open_stream`` for the web chat) goes through here."""
        _check(req)
        usage = Usage()
        reply = Reply(self.name)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        plan = await self.plan(messages, ctx, admit, usage)
        if plan.reply is not None:
            _log_fields(self.name, usage)
            return Answer(reply, reply.fixed(plan.reply, usage), usage)
        history = clean_history(messages)
        if plan.context is not None:
            history = with_system(history, plan.context)
        body: Body = {k: v for k, v in req.to_wire().items() if k not in _NOT_FORWARDED}
        body.update(model=self.default_model, messages=history)
        inner = Caller(ctx, admit).inner(ANSWER_ENDPOINT)
        batches = await self.inference.open_chat_stream(body, inner, admit)

        def done(chunk_usage: Any, delivered: int, failure: APIError | None) -> None:
            settle(self.inference, inner, chunk_usage, delivered, history, failure, usage)
            _log_fields(self.name, usage)

        return Answer(reply, reply.forward(batches, plan.source, usage, done), usage, inner.rate_headers or [])

    async def plan(self, messages: list[dict[str, Any]], ctx: RequestContext, admit: Admit, usage: Usage) -> Plan:
        """Ask the function model (again after bad arguments) and run the tool it calls."""
        latest = latest_user_message(messages)
        if latest is None or not len(self.tools):
            return Plan()
        caller = Caller(ctx, admit)
        asked: list[dict[str, Any]] = [{"role": "system", "content": FUNCTION_PROMPT}, latest]
        problem = ""
        for _ in range(self.reasks + 1):
            decision = await self._ask(asked, caller, usage)
            call = decision.call
            if call is None:
                return Plan()
            try:
                result = await self.tools.call(call.name, call.arguments, caller)
            except ToolArgumentsError as exc:
                problem = exc.message
                asked = [*asked, call.message(), {"role": "tool", "tool_call_id": call.id,
                                                  "content": f"Error: {exc.message}. Call a function again, with "
                                                             "arguments that fit its parameters."}]
                continue
            if result.error:
                return Plan(reply=f"Sorry, I could not get an answer from the {call.name} tool: "
                                  f"{result.text.rstrip('.')}.")
            if result.images:  # the image is the answer: no model writes image links
                return Plan(reply=with_source(result.text, result.source))
            return Plan(context=tool_context(call.name, result.text), source=result.source)
        return Plan(reply=f"Sorry, I could not work out how to answer that with my tools ({problem.rstrip('.')}).")

    async def _ask(self, asked: list[dict[str, Any]], caller: Caller, usage: Usage) -> Decision:
        """One streamed call of the function model, read until it is clear what it wants (then closed)."""
        inner = caller.inner(FUNCTION_ENDPOINT)
        body: Body = {"model": self.function_model, "messages": asked, "tools": self.tools.openai_tools(),
                      "tool_choice": "required"}
        batches = await self.inference.open_chat_stream(body, inner, caller.admit)
        decision: Decision | None = None
        failure: APIError | None = None
        try:
            decision = await decide(batches, self.detect_tokens)
        except APIError as exc:
            failure = exc
        except asyncio.CancelledError:
            failure = ClientClosed()
            raise
        except Exception as exc:  # noqa: BLE001 - a broken stream: the default model answers instead
            log.exception("the function model's stream failed")
            failure = UpstreamError(f"The stream failed: {type(exc).__name__}")
        finally:
            await batches.aclose()  # type: ignore[attr-defined]  # the rest of its answer is not needed
            settle(self.inference, inner, decision.usage if decision else None, decision.tokens if decision else 0,
                   asked, failure, usage)
        if decision is None:
            log.warning("the function model failed (%s): answering with the default model", failure)
            return Decision(None, "failed")
        return decision


def _check(req: ChatCompletionRequest) -> None:
    extra = req.model_extra or {}
    for name in _CLIENT_TOOLS:
        if extra.get(name) is not None:
            raise InvalidRequest("The assistant chooses its own tools: send a request without tools.", param=name)
    if req.choices() != 1:
        raise InvalidRequest("The assistant answers with one choice: n must be 1.", param="n")


def _log_fields(name: str, usage: Usage) -> None:
    """The request's log line names the assistant and the turn's whole usage (the inner calls each wrote theirs)."""
    fields = request_fields_var.get()
    if fields is not None:
        fields.update(model=name, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
