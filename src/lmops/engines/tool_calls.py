"""Function calling for a model that was not trained for it: a grammar makes its answer the call.

When a request demands a call (``tool_choice`` "required", or a named function), the model is told about the
tools in a system message and its output is constrained, with a llama.cpp grammar made from a JSON schema, to
``{"name": <one of the tools>, "arguments": <that tool's parameters>}``. The answer is then a ``tool_calls``
message as the OpenAI API defines it. With ``tool_choice`` "auto" (or "none") the model answers in text, which
the API allows: it decides whether to call, and this one never does on its own.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any


class ToolChoiceError(ValueError):
    """The request's tools and tool_choice ask for a call that cannot be made (a 400)."""


@dataclass(frozen=True)
class ForcedCall:
    """A call the answer must be: the JSON schema of its object, and the tools it may name."""

    schema: dict[str, Any]
    tools: list[dict[str, Any]]  # the function objects offered to the model (name, description, parameters)


def forced_call(body: dict[str, Any]) -> ForcedCall | None:
    """The call ``tool_choice`` demands, or None when the model may answer in text."""
    choice = body.get("tool_choice")
    if choice != "required" and not isinstance(choice, dict):
        return None
    tools = body.get("tools")
    functions: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" \
            else None
        if isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]:
            functions.append(function)
    if isinstance(choice, dict):
        function = choice.get("function")
        wanted = function.get("name") if isinstance(function, dict) else None
        if not isinstance(wanted, str):
            raise ToolChoiceError('tool_choice is "none", "auto", "required" or '
                                  '{"type": "function", "function": {"name": "<a tool\'s name>"}}')
        functions = [f for f in functions if f["name"] == wanted]
        if not functions:
            raise ToolChoiceError(f"tool_choice names the function {wanted!r}, which is not among the tools")
    if not functions:
        raise ToolChoiceError("tool_choice asks for a tool call, but the request has no function tools")
    options = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": _parameters(f)},
                "required": ["name", "arguments"]} for f in functions]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return ForcedCall(schema, functions)


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    params = function.get("parameters")
    return params if isinstance(params, dict) and params else {"type": "object"}


def tools_message(call: ForcedCall) -> dict[str, str]:
    """The system message that tells the model which functions it calls, and how."""
    listed = json.dumps([{"name": f["name"], "description": f.get("description", ""), "parameters": _parameters(f)}
                         for f in call.tools], ensure_ascii=False)
    return {"role": "system",
            "content": f"You call functions. Available functions: {listed}\n"
                       'Answer with one call as JSON: {"name": <function name>, "arguments": <its arguments>}.'}


def as_tool_call(text: str) -> dict[str, Any] | None:
    """The ``tool_calls`` entry for the generated ``text``, or None when it is not a whole call (cut short)."""
    try:
        call = json.loads(text)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    return {"id": f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}), ensure_ascii=False)}}


def history_text(message: dict[str, Any]) -> str | None:
    """An earlier assistant message's calls, as text the chat template can show the model (None: no calls)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return None
    shown = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            shown.append({"name": function.get("name"), "arguments": function.get("arguments")})
    return json.dumps(shown, ensure_ascii=False)
