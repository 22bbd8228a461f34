"""Step kinds: ``llm`` (versioned prompt, model/adapter, params, optional JSON schema with bounded re-ask),
``guardrail`` (a rule or a model judges another step's output; policy retry, flag or drop),
``python`` (pre/post-processing) and ``request`` (an OpenAI batch line, forwarded as it is).

A step returns a ``StepOutput`` carrying its lineage; it raises ``StepFailed`` when it cannot
produce an output (``retryable``: try the item again later).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal, Protocol

import jsonschema
import orjson
from jinja2 import Environment, StrictUndefined, Template, TemplateError

from lmops.batch.calls import ENDPOINTS, CallFailed, Caller, validate_request
from lmops.protocol.errors import APIError


class StepLookup(Protocol):
    def step(self, name: str) -> "Step": ...


class StepEnv(Protocol):
    """What a step reads and writes while it runs (``workflow.StepContext`` is the implementation; a protocol
    here keeps the step kinds and the workflow that runs them from importing each other)."""

    record: Any
    params: dict[str, Any]
    team_id: str
    caller: Caller
    default_model: str | None
    seed: int | None

    @property
    def workflow(self) -> StepLookup: ...

    @property
    def outputs(self) -> dict[str, Any]: ...

    def variables(self, **extra: Any) -> dict[str, Any]: ...

    def inputs_of(self, step: "Step") -> dict[str, Any]: ...

    def replace_result(self, name: str, result: "StepOutput") -> None: ...

    def mark(self, name: str, status: str) -> None: ...


class StepFailed(Exception):
    def __init__(self, code: str, message: str, *, retryable: bool = False, output: Any = None,
                 spent: "StepOutput | None" = None):
        super().__init__(message)
        self.code, self.message, self.retryable, self.output = code, message, retryable, output
        self.spent = spent  # lineage and tokens of the calls made before failing

    @classmethod
    def from_call(cls, exc: CallFailed, output: Any = None) -> "StepFailed":
        return cls(exc.code, exc.message, retryable=exc.retryable, output=output)


@dataclass
class StepOutput:
    """One step's output and lineage (what the result row stores)."""

    output: Any
    status: str = "ok"  # ok | error | flagged | dropped
    inputs: Any = None
    prompt: str | None = None
    prompt_version: str | None = None
    model: str | None = None
    adapter: str | None = None
    params: dict[str, Any] | None = None
    seed: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    request: dict[str, Any] | None = None  # a model call's recipe, what replays it exactly (see LLMStep.request)
    step_hash: str | None = None  # the hash of the step's definition it ran with

    @classmethod
    def from_row(cls, row: Any) -> "StepOutput":
        """The output and lineage a result row (``batch_results``) recorded."""
        loads = orjson.loads
        return cls(loads(row.output) if row.output else None, status=row.status,
                   inputs=loads(row.inputs) if row.inputs else None, prompt=row.prompt,
                   prompt_version=row.prompt_version, model=row.model, adapter=row.adapter,
                   params=loads(row.params) if row.params else None, seed=row.seed,
                   prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
                   latency_ms=row.latency_ms, request=loads(row.request) if row.request else None,
                   step_hash=row.step_hash)


@dataclass(frozen=True)
class Prompt:
    """A versioned prompt: Jinja2 templates over ``record``, earlier steps' outputs (by name) and ``params``."""

    version: str
    user: str
    system: str | None = None

    @cached_property
    def _templates(self) -> tuple[Template, Template | None]:
        env = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        return env.from_string(self.user), env.from_string(self.system) if self.system else None

    def render(self, variables: dict[str, Any]) -> tuple[str | None, str]:
        user, system = self._templates
        return (_render(system, variables) if system else None), _render(user, variables)

    def render_for(self, step: str, variables: dict[str, Any]) -> tuple[str | None, str]:
        """Render; a record the template cannot use fails its item (not retried)."""
        try:
            return self.render(variables)
        except TemplateError as exc:
            raise StepFailed("prompt_render_failed", f"step '{step}': prompt {self.version}: {exc}") from None


@dataclass(frozen=True)
class Step:
    name: str
    after: tuple[str, ...] = ()

    def dependencies(self) -> tuple[str, ...]:
        return self.after

    async def run(self, ctx: StepEnv) -> StepOutput:
        raise NotImplementedError


@dataclass(frozen=True)
class RequestStep(Step):
    """Forward the item's payload (an OpenAI request body) to ``endpoint``; the output is OpenAI's response object."""

    endpoint: str = "/v1/chat/completions"

    async def run(self, ctx: StepEnv) -> StepOutput:
        try:
            res = await ctx.caller.call(ctx.team_id, self.endpoint, ctx.record, checked=True)  # checked at intake
        except CallFailed as exc:
            if exc.retryable or exc.status is None:
                raise StepFailed.from_call(exc) from None
            out = {"status_code": exc.status, "request_id": None, "body": exc.body}
            raise StepFailed.from_call(exc, output=out) from None
        return StepOutput({"status_code": 200, "request_id": res.request_id, "body": res.body},
                          model=res.body.get("model"), prompt_tokens=res.prompt_tokens,
                          completion_tokens=res.completion_tokens, latency_ms=res.latency_ms)


@dataclass(frozen=True)
class LLMStep(Step):
    """Render ``prompt``, call ``model`` (or the job's default model), optionally validate JSON against ``schema``.

    ``adapter`` names a LoRA adapter of that model (declared under the model's ``adapters``): the call goes to
    ``"<model>:<adapter>"``, served by the model's replicas, and the lineage keeps both. ``parse`` turns the
    text into the output.
    """

    prompt: Prompt = Prompt("0", "")
    model: str | None = None
    adapter: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] | None = None
    max_reasks: int = 2
    parse: Callable[[str], Any] | None = None

    def __post_init__(self) -> None:
        """Check ``params`` once, here, so that calls need not validate them again."""
        probe = {"model": "-", "messages": [{"role": "user", "content": "-"}], **self.params}
        try:
            validate_request(ENDPOINTS["/v1/chat/completions"], probe)
        except APIError as exc:
            raise ValueError(f"step {self.name!r}: invalid params: {exc.message}") from None

    def request(self, ctx: StepEnv, feedback: str | None = None) -> StepOutput:
        """Render the step's call: its lineage, whose ``request`` is the exact request to send.

        ``request`` = ``{"endpoint", "body"}`` (the chat completion request as the step sends it through the
        router: rendered messages, ``"<model>[:<adapter>]"``, every sampling param, seed, response_format),
        plus ``"schema"`` and ``"max_reasks"`` when the answer is validated against a JSON schema.
        """
        system, user = self.prompt.render_for(self.name, ctx.variables(feedback=feedback))
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        base = self.model or ctx.default_model
        model = f"{base}:{self.adapter}" if self.adapter else base
        params = {**self.params}
        if ctx.seed is not None:
            params.setdefault("seed", ctx.seed)
        if self.schema is not None:
            params.setdefault("response_format", {"type": "json_schema",
                                                  "json_schema": {"name": self.name, "schema": self.schema}})
        request: dict[str, Any] = {"endpoint": "/v1/chat/completions",
                                   "body": {"model": model, "messages": messages, **params}}
        if self.schema is not None:
            request.update(schema=self.schema, max_reasks=self.max_reasks)
        return StepOutput(None, inputs=ctx.inputs_of(self), prompt=_prompt_text(system, user),
                          prompt_version=self.prompt.version, model=base, adapter=self.adapter, params=params,
                          seed=params.get("seed"), request=request)

    async def run(self, ctx: StepEnv, feedback: str | None = None) -> StepOutput:
        return await send(ctx, self.name, self.request(ctx, feedback), self.parse)


async def send(ctx: StepEnv, step: str, lineage: StepOutput,
               parse: Callable[[Any], Any] | None = None) -> StepOutput:
    """Send ``lineage.request`` (an LLM step's, rendered now or recorded earlier) and fill in the output.

    With a ``schema`` the answer must be JSON that matches it: the call re-asks up to ``max_reasks`` times.
    ``parse`` turns the text (or the JSON value) into the output. A failure keeps ``lineage`` (``spent``).
    """
    request = lineage.request or {}
    body: dict[str, Any] = request["body"]
    schema, max_reasks = request.get("schema"), int(request.get("max_reasks", 0))
    messages = body["messages"]
    problem: str | None = None
    text = ""
    try:
        for _ in range(max_reasks + 1 if schema is not None else 1):
            text = await _chat(ctx, lineage, {**body, "messages": messages},
                               checked=True)  # params were checked when the step was defined
            if schema is None:
                lineage.output = parse(text) if parse else text
                return lineage
            problem, value = _check_json(text, schema)
            if problem is None:
                lineage.output = parse(value) if parse else value
                return lineage
            messages = messages + [{"role": "assistant", "content": text},
                                   {"role": "user", "content": f"That answer is invalid: {problem}. Answer again "
                                                               "with only a JSON object that matches the schema."}]
    except StepFailed as exc:
        exc.spent = exc.spent or lineage  # the failed call's request stays in the lineage
        raise
    raise StepFailed("schema_validation_failed",
                     f"step '{step}': no valid JSON after {max_reasks} re-asks: {problem}",
                     output={"text": text}, spent=lineage)


@dataclass(frozen=True)
class PythonStep(Step):
    """``fn(record, outputs, params)`` (sync or async) returns the step's output."""

    fn: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], Any] = lambda r, o, p: None  # noqa: E731

    async def run(self, ctx: StepEnv) -> StepOutput:
        try:
            value = self.fn(ctx.record, ctx.outputs, ctx.params)
            if inspect.isawaitable(value):
                value = await value
        except StepFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad record fails its item, never the worker
            raise StepFailed("python_step_failed", f"step '{self.name}': {type(exc).__name__}: {exc}") from None
        return StepOutput(value, inputs=ctx.inputs_of(self))


Rule = Callable[[Any, dict[str, Any], dict[str, Any]], "str | None | Awaitable[str | None]"]
JUDGE = Prompt("guardrail-v1", system="You check marketing text against brand guidelines.", user=(
    "Guidelines:\n{{ guidelines }}\n\nText:\n{{ text }}\n\n"
    "Does the text follow every guideline? Answer PASS or FAIL, then one short reason."))


@dataclass(frozen=True)
class GuardrailStep(Step):
    """Judge ``target``'s output against the tenant's guidelines (``params['guidelines']``).

    ``rule(output, guidelines, record)`` returns a violation (str) or None; without a rule, ``model`` (or the
    job's default model) judges with ``prompt``. On a violation, ``policy``: ``retry`` runs the target again
    (up to ``max_retries``, with the violation as ``feedback``) then flags; ``flag`` keeps the output, flagged;
    ``drop`` drops the target's output.
    """

    target: str = ""
    rule: Rule | None = None
    model: str | None = None
    prompt: Prompt = JUDGE
    policy: Literal["retry", "flag", "drop"] = "flag"
    max_retries: int = 1

    def dependencies(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.target, *self.after)))

    async def judge(self, ctx: StepEnv, output: Any, lineage: StepOutput) -> str | None:
        guidelines = ctx.params.get("guidelines") or {}
        if self.rule is not None:
            verdict = self.rule(output, guidelines, ctx.record)
            return await verdict if inspect.isawaitable(verdict) else verdict  # type: ignore[return-value]
        text = output if isinstance(output, str) else orjson.dumps(output).decode()
        system, user = self.prompt.render_for(self.name, {"guidelines": guidelines, "text": text,
                                                          "record": ctx.record})
        model = self.model or ctx.default_model
        lineage.prompt, lineage.prompt_version, lineage.model = _prompt_text(system, user), self.prompt.version, model
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        lineage.params = {"max_tokens": 48, "temperature": 0}
        body = {"model": model, "messages": messages, **lineage.params}
        lineage.request = {"endpoint": "/v1/chat/completions", "body": body, "judge": True}  # the last judgement
        answer = await _chat(ctx, lineage, body)
        return None if answer.upper().startswith("PASS") else (answer or "FAIL")

    async def run(self, ctx: StepEnv) -> StepOutput:
        target = ctx.workflow.step(self.target)
        lineage = StepOutput(None, inputs={"target": self.target, "output": ctx.outputs.get(self.target)})
        violation = await self.judge(ctx, ctx.outputs.get(self.target), lineage)
        retries = 0
        while violation is not None and self.policy == "retry" and retries < self.max_retries \
                and isinstance(target, LLMStep):
            retries += 1
            redo = await target.run(ctx, feedback=violation)
            ctx.replace_result(self.target, redo)
            violation = await self.judge(ctx, redo.output, lineage)
        verdict = {"passed": violation is None, "reason": violation, "retries": retries, "policy": self.policy}
        if violation is None:
            return replace(lineage, output=verdict)
        if self.policy == "drop":
            ctx.mark(self.target, "dropped")
            return replace(lineage, output=verdict, status="dropped")
        ctx.mark(self.target, "flagged")
        return replace(lineage, output=verdict, status="flagged")


def _render(template: Template, variables: dict[str, Any]) -> str:
    """Template.render without copying the globals into a fresh context for every record."""
    return "".join(template.root_render_func(template.new_context({**template.globals, **variables}, shared=True)))


def _prompt_text(system: str | None, user: str) -> str:
    return f"[system]\n{system}\n[user]\n{user}" if system else user


def _check_json(text: str, schema: dict[str, Any]) -> tuple[str | None, Any]:
    start, end = text.find("{"), text.rfind("}")
    try:
        value = orjson.loads(text[start:end + 1] if start >= 0 and end > start else text)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc})", None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return exc.message, None
    return None, value


async def _chat(ctx: Any, lineage: Any, body: dict[str, Any], *, checked: bool = False) -> str:
    """One chat call for a step: its answer text, its tokens and latency added to the step's lineage."""
    try:
        res = await ctx.caller.call(ctx.team_id, "/v1/chat/completions", body, checked=checked)
    except CallFailed as exc:
        raise StepFailed.from_call(exc) from None
    lineage.prompt_tokens += res.prompt_tokens
    lineage.completion_tokens += res.completion_tokens
    lineage.latency_ms += res.latency_ms
    return (res.body["choices"][0]["message"].get("content") or "").strip()
