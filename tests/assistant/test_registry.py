"""Tools offered to a model: the OpenAI tools list with "none", argument checks, the registry and its plugins."""

from __future__ import annotations

import json
import logging
from importlib import metadata
from typing import Any

import pytest

from lmops.assistant.tools.base import (
    NONE_TOOL,
    Tool,
    ToolArgumentsError,
    ToolError,
    ToolResult,
    openai_tools,
    validate_arguments,
)
from lmops.assistant.tools.registry import ENTRY_POINT_GROUP, ToolRegistry
from lmops.config import Settings, ToolsConfig


class EchoTool(Tool):
    name = "echo"
    description = "Repeat a text."
    parameters: dict[str, Any] = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 10},
                                                                  "times": {"type": "integer", "minimum": 1}},
                                  "required": ["text"], "additionalProperties": False}

    def __init__(self, config: ToolsConfig | None = None):
        self.config = config
        self.closed = False

    async def run(self, args: dict[str, Any]) -> ToolResult:
        if args["text"] == "fail":
            raise ToolError("echo is unreachable")
        if args["text"] == "bug":
            raise RuntimeError("a bug")
        if args["text"] == "bad":
            raise ToolArgumentsError("say something else")
        return ToolResult(text=args["text"] * args.get("times", 1), source="echo")

    async def close(self) -> None:
        self.closed = True


def test_openai_tools_lists_each_tool_and_none_last():
    specs = openai_tools([EchoTool()])
    assert specs == [
        {"type": "function", "function": {"name": "echo", "description": "Repeat a text.",
                                          "parameters": EchoTool.parameters}},
        {"type": "function", "function": {"name": "none", "description": "If no other function is needed, call "
                                          "this one.", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert openai_tools([]) == specs[1:]
    json.dumps(specs)  # what goes in a request body


def test_validate_arguments():
    tool = EchoTool()
    assert validate_arguments(tool, '{"text": "hi", "times": 2}') == {"text": "hi", "times": 2}
    cases = {
        '{"text": ': "are not valid JSON",
        "[1]": "must be a JSON object, not list",
        "{}": "'text' is a required property",
        '{"text": 3}': "text: 3 is not of type 'string'",
        '{"text": "hi", "times": 0}': "times: 0 is less than the minimum of 1",
        '{"text": "hi", "colour": "red"}': "Additional properties are not allowed ('colour' was unexpected)",
        '{"text": "' + "a" * 30_000 + '"}': "too long",
    }
    for raw, expected in cases.items():
        with pytest.raises(ToolArgumentsError) as info:
            validate_arguments(tool, raw)
        assert expected in info.value.message and info.value.message.count("\n") == 0, info.value.message
    with pytest.raises(ToolArgumentsError, match="required property"):
        validate_arguments(tool, "")  # no arguments at all: {}


def test_register_refuses_unusable_tools():
    registry = ToolRegistry()
    registry.register(EchoTool())
    with pytest.raises(ValueError, match="already registered"):
        registry.register(EchoTool())

    def tool(**attrs: Any) -> Tool:
        t = EchoTool()
        for k, v in attrs.items():
            setattr(t, k, v)
        return t

    with pytest.raises(ValueError, match="reserved"):
        registry.register(tool(name=NONE_TOOL))
    with pytest.raises(ValueError, match="letters, digits"):
        registry.register(tool(name="get weather"))
    with pytest.raises(ValueError, match="no description"):
        registry.register(tool(name="a", description=" "))
    with pytest.raises(ValueError, match="type 'object'"):
        registry.register(tool(name="b", parameters={"type": "string"}))
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        registry.register(tool(name="c", parameters={"type": "object", "properties": {"x": {"type": "nope"}}}))
    assert registry.names() == ["echo"]


async def test_call_validates_runs_and_reports_failures():
    registry = ToolRegistry()
    echo = EchoTool()
    registry.register(echo)
    assert await registry.call("echo", '{"text": "ab", "times": 2}') == ToolResult(text="abab", source="echo")
    with pytest.raises(ToolArgumentsError, match="no function named 'weather'; call one of: echo, none"):
        await registry.call("weather", "{}")
    with pytest.raises(ToolArgumentsError, match="required property"):
        await registry.call("echo", "{}")
    with pytest.raises(ToolArgumentsError, match="say something else"):
        await registry.call("echo", '{"text": "bad"}')
    assert await registry.call("echo", '{"text": "fail"}') == ToolResult(text="echo is unreachable", error=True)
    assert await registry.call("echo", '{"text": "bug"}') == ToolResult(text="the echo tool failed unexpectedly",
                                                                       error=True)
    await registry.close()
    assert echo.closed


def test_from_config_builds_the_enabled_builtins():
    config = Settings().assistant.tools
    registry = ToolRegistry.from_config(config.model_copy(update={"entry_points": False}))
    assert registry.names() == ["weather", "wikipedia", "math"]
    assert [s["function"]["name"] for s in registry.openai_tools()] == ["weather", "wikipedia", "math", "none"]
    off = ToolsConfig.model_validate({"weather": {"enabled": False}, "math": {"enabled": False},
                                      "entry_points": False})
    assert ToolRegistry.from_config(off).names() == ["wikipedia"]


def test_config_defaults_and_validation():
    tools = Settings(assistant={"tools": {"wikipedia": {"base_url": "https://wiki.example.org/"}}}).assistant.tools
    assert tools.weather.base_url == "https://api.openweathermap.org"
    assert tools.weather.api_key_env == "OPENWEATHER_API_KEY"
    assert tools.wikipedia.base_url == "https://wiki.example.org" and tools.wikipedia.api_path == "/w/api.php"
    assert (tools.math.timeout, tools.math.max_chars) == (5.0, 2000)
    with pytest.raises(ValueError, match="http:// or https://"):
        ToolsConfig.model_validate({"weather": {"base_url": "ftp://x"}})
    with pytest.raises(ValueError, match="starting with '/'"):
        ToolsConfig.model_validate({"wikipedia": {"api_path": "api.php"}})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        ToolsConfig.model_validate({"math": {"timeot": 1}})


class FakeEntryPoint:
    def __init__(self, name: str, target: Any):
        self.name, self.value, self.group = name, f"plugin:{name}", ENTRY_POINT_GROUP
        self._target = target

    def load(self) -> Any:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_entry_points_add_tools_and_a_broken_plugin_is_skipped(monkeypatch, caplog):
    class Upper(EchoTool):
        name = "upper"

    def factory(config: ToolsConfig) -> Tool:
        tool = Upper(config)
        tool.description = f"Upper-case a text ({config.plugins['upper']['style']})."
        return tool

    points = [FakeEntryPoint("echo", EchoTool), FakeEntryPoint("broken", ImportError("no module named plugin")),
              FakeEntryPoint("notatool", lambda config: object()), FakeEntryPoint("upper", factory),
              FakeEntryPoint("twice", EchoTool)]
    asked: list[str] = []

    def entry_points(*, group: str) -> list[FakeEntryPoint]:
        asked.append(group)
        return points

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    config = ToolsConfig.model_validate({"weather": {"enabled": False}, "wikipedia": {"enabled": False},
                                         "math": {"enabled": False}, "plugins": {"upper": {"style": "loud"}}})
    with caplog.at_level(logging.ERROR, logger="lmops.assistant"):
        registry = ToolRegistry.from_config(config)
    assert asked == ["lmops.tools"]
    assert registry.names() == ["echo", "upper"]
    echo = registry.get("echo")
    assert isinstance(echo, EchoTool) and echo.config is config  # a Tool class is called with the config
    assert registry.get("upper").description == "Upper-case a text (loud)."  # type: ignore[union-attr]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "entry point broken" in logged and "entry point notatool" in logged and "entry point twice" in logged
    assert not ToolRegistry.from_config(config.model_copy(update={"entry_points": False})).names()


async def test_the_builtin_tools_through_the_registry(serve, monkeypatch):
    from lmops.testing.fake_mediawiki import FakeMediaWiki
    from lmops.testing.fake_openweather import FakeOpenWeather

    weather, wiki = serve(FakeOpenWeather().app()), serve(FakeMediaWiki().app())
    monkeypatch.delenv("LMOPS_TEST_NO_KEY", raising=False)
    config = ToolsConfig.model_validate({"weather": {"base_url": weather.url, "api_key_env": "LMOPS_TEST_NO_KEY"},
                                         "wikipedia": {"base_url": wiki.url}, "entry_points": False})
    registry = ToolRegistry.from_config(config)
    try:
        unconfigured = await registry.call("weather", '{"city": "Paris"}')
        assert unconfigured.error and unconfigured.text.startswith("the weather tool is not configured")
        monkeypatch.setenv("LMOPS_TEST_NO_KEY", "test-key")
        assert (await registry.call("weather", '{"city": "Paris"}')).text.startswith("Paris, FR: 18 °C")
        assert (await registry.call("wikipedia", '{"query": "Turing"}')).source == \
            f"Wikipedia: Alan Turing ({wiki.url}/wiki/Alan_Turing)"
        assert (await registry.call("math", '{"operation": "solve", "expression": "x**2-4"}')).text == \
            "solutions for x: [-2, 2]"
        with pytest.raises(ToolArgumentsError, match="unknown function '__import__'"):
            await registry.call("math", json.dumps({"operation": "evaluate", "expression": "__import__('os')"}))
        with pytest.raises(ToolArgumentsError, match="is not one of"):
            await registry.call("math", '{"operation": "integrate", "expression": "x"}')
    finally:
        await registry.close()
