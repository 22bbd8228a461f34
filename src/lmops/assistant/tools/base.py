"""What a tool is, what it answers, how it fails, and how tools are offered to a model (OpenAI function calling).

A tool has a ``name`` (an OpenAI function name), a ``description`` the model reads, ``parameters`` (the JSON
schema of its arguments: the ``parameters`` object of an OpenAI function) and ``async run(args) -> ToolResult``.
It fails with a ``ToolError`` whose message can be shown to the user as it is; ``ToolArgumentsError`` (a
``ToolError``) says the arguments were wrong, and its message is written to be sent back to the model that chose
them, so that it can try again.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from lmops.serving.context import RequestContext
from lmops.serving.virtual import Admit

NONE_TOOL = "none"  # the function a model calls when it needs no tool: the router answers directly
NONE_DESCRIPTION = "If no other function is needed, call this one."
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI accepts as a function name
MAX_ARGUMENT_CHARS = 20_000  # a model's arguments longer than this are refused unread


@dataclass
class Caller:
    """Whom a tool works for, for a tool that calls lmops itself (the image tool): the turn's request context and
    how the caller's calls are admitted (the guard, for its key or its team)."""

    ctx: RequestContext
    admit: Admit

    def inner(self, endpoint: str) -> RequestContext:
        """A call's own context: recorded and billed by itself, under the turn's request id."""
        return RequestContext(request_id=self.ctx.request_id, endpoint=endpoint)


@dataclass
class ToolResult:
    """What a tool found: ``text`` for the model (and the user), ``source`` to cite (None: nothing to cite),
    ``images`` (URLs or data: URLs), ``error`` when ``text`` explains a failure instead."""

    text: str
    source: str | None = None
    images: list[str] = field(default_factory=list)
    error: bool = False


class ToolError(Exception):
    """A failure with a message fit for the user: the service is unreachable, unconfigured, did not answer..."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ToolArgumentsError(ToolError):
    """The arguments were wrong; the message says how, for the model to correct them."""


class Tool(ABC):
    """One tool. Subclasses set ``name``, ``description`` and ``parameters`` and implement ``run``; ``close`` frees
    what ``run`` opened (HTTP sessions, processes)."""

    name: str
    description: str
    parameters: dict[str, Any]

    @abstractmethod
    async def run(self, args: dict[str, Any]) -> ToolResult:
        """Do the work for ``args`` (already validated against ``parameters``); raise ``ToolError`` on failure."""

    async def run_for(self, args: dict[str, Any], caller: Caller | None) -> ToolResult:
        """``run`` for ``caller``; a tool that calls lmops itself (admitted and billed for the caller) overrides
        this instead."""
        return await self.run(args)

    async def close(self) -> None:  # noqa: B027 - most tools hold nothing
        """Free what the tool holds; it may be used again afterwards (it reopens what it needs)."""


def check_tool(tool: Tool) -> None:
    """ValueError unless ``tool`` can be offered to a model: a valid function name that is not ``none``, a
    description, and ``parameters`` a JSON schema of an object."""
    name = getattr(tool, "name", None)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"tool name must be 1-64 letters, digits, '_' or '-': {name!r}")
    if name == NONE_TOOL:
        raise ValueError(f"the tool name {NONE_TOOL!r} is reserved (the model calls it to answer directly)")
    if not isinstance(getattr(tool, "description", None), str) or not tool.description.strip():
        raise ValueError(f"tool {name!r} has no description")
    parameters = getattr(tool, "parameters", None)
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ValueError(f"tool {name!r}: parameters must be a JSON schema with type 'object'")
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        raise ValueError(f"tool {name!r}: parameters are not a valid JSON schema: {exc.message}") from None


def one_string_parameter(name: str, max_length: int, description: str) -> dict[str, Any]:
    """The JSON schema of arguments that are one required, non-empty string (a city, a search query)."""
    return {"type": "object",
            "properties": {name: {"type": "string", "minLength": 1, "maxLength": max_length,
                                  "description": description}},
            "required": [name], "additionalProperties": False}


def function_spec(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def openai_tools(tools: Iterable[Tool]) -> list[dict[str, Any]]:
    """The ``tools`` list of a chat completion request offering ``tools``, and last the ``none`` function (no
    arguments), which the model calls when no other is needed."""
    specs = [function_spec(t.name, t.description, t.parameters) for t in tools]
    specs.append(function_spec(NONE_TOOL, NONE_DESCRIPTION, {"type": "object", "properties": {}}))
    return specs


def validate_arguments(tool: Tool, raw: str | None) -> dict[str, Any]:
    """The arguments of a model's call of ``tool`` (the JSON string of ``tool_calls[].function.arguments``), checked
    against ``tool.parameters``. ``ToolArgumentsError`` says what is wrong, in words meant for the model."""
    if raw is None or not raw.strip():
        raw = "{}"
    if len(raw) > MAX_ARGUMENT_CHARS:
        raise ToolArgumentsError(f"the arguments for {tool.name} are too long ({len(raw)} characters, at most "
                                 f"{MAX_ARGUMENT_CHARS})")
    try:
        args = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ToolArgumentsError(f"the arguments for {tool.name} are not valid JSON ({exc}); send a JSON object "
                                 f"matching its parameters") from None
    if not isinstance(args, dict):
        raise ToolArgumentsError(f"the arguments for {tool.name} must be a JSON object, not {type(args).__name__}")
    errors = sorted(Draft202012Validator(tool.parameters).iter_errors(args), key=lambda e: list(e.path))
    if errors:
        problems = "; ".join(_describe(e) for e in errors[:3])
        raise ToolArgumentsError(f"invalid arguments for {tool.name}: {problems}")
    return args


def _describe(error: Any) -> str:
    where = "/".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
    return f"{where}: {message}" if where else message
