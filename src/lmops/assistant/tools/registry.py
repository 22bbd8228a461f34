"""The tools one assistant offers: built from configuration, plus what plugins declare.

A plugin adds a tool with one class and one entry point in the group ``lmops.tools``::

    [project.entry-points."lmops.tools"]
    stocks = "my_package.stocks:StocksTool"

The entry point is a ``Tool`` class or a factory: it is called with the ``ToolsConfig`` (a plugin reads its own
settings from ``config.plugins[<entry point name>]``) and returns a ``Tool``. A plugin that fails to load, or
gives something that is not a usable tool, is logged and left out; the others still load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from lmops.assistant.tools.base import (
    NONE_TOOL,
    Caller,
    Tool,
    ToolArgumentsError,
    ToolError,
    ToolResult,
    check_tool,
    openai_tools,
    validate_arguments,
)
from lmops.assistant.tools.image import ImageMaker, ImageTool
from lmops.assistant.tools.sympy_tool import MathTool
from lmops.assistant.tools.weather import WeatherTool
from lmops.assistant.tools.wikipedia import WikipediaTool
from lmops.config import ToolsConfig

log = logging.getLogger("lmops.assistant")
ENTRY_POINT_GROUP = "lmops.tools"


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    @classmethod
    def from_config(cls, config: ToolsConfig, images: ImageMaker | None = None) -> "ToolRegistry":
        """The built-in tools that ``config`` enables, then those of installed plugins (if ``entry_points``);
        ``images``: lmops's image generation, for the image tool."""
        registry = cls()
        if config.weather.enabled:
            registry.register(WeatherTool(config.weather))
        if config.wikipedia.enabled:
            registry.register(WikipediaTool(config.wikipedia))
        if config.math.enabled:
            registry.register(MathTool(config.math))
        if config.image.model is not None:
            registry.register(ImageTool(config.image.model, images, config.image.size))
        if config.entry_points:
            registry.load_entry_points(config)
        return registry

    def register(self, tool: Tool) -> None:
        """Add ``tool``; ValueError if it cannot be offered to a model or its name is taken."""
        check_tool(tool)
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def load_entry_points(self, config: ToolsConfig) -> list[str]:
        """Register the tool of each ``lmops.tools`` entry point; the names of those registered."""
        loaded: list[str] = []
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                tool = ep.load()(config)
                if not isinstance(tool, Tool):
                    raise TypeError(f"it gave {type(tool).__name__}, not a lmops Tool")
                self.register(tool)
            except Exception:  # noqa: BLE001 - one broken plugin must not stop the others
                log.exception("could not load the assistant tool of entry point %s (%s)", ep.name, ep.value)
                continue
            loaded.append(tool.name)
        return loaded

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return list(self._tools)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The ``tools`` of a chat request offering every registered tool, and ``none``."""
        return openai_tools(self._tools.values())

    async def call(self, name: str, raw_arguments: str | None, caller: Caller | None = None) -> ToolResult:
        """Run the model's call of ``name`` with ``raw_arguments`` (a JSON string), for ``caller``.

        ``ToolArgumentsError`` (for the model to try again) for an unknown name, arguments that do not match the
        tool's schema, or that the tool refuses. Any other failure is a ``ToolResult`` with ``error`` set whose
        text can be shown to the user: the tool's own ``ToolError`` message, or a generic one (logged) for an
        unexpected exception.
        """
        tool = self._tools.get(name)
        if tool is None:
            offered = ", ".join([*self._tools, NONE_TOOL])
            raise ToolArgumentsError(f"there is no function named {name!r}; call one of: {offered}")
        args = validate_arguments(tool, raw_arguments)
        try:
            return await tool.run_for(args, caller)
        except ToolArgumentsError:
            raise
        except ToolError as exc:
            return ToolResult(text=exc.message, error=True)
        except Exception:  # noqa: BLE001 - a tool's bug is reported, never crashes the assistant
            log.exception("the assistant tool %s failed", name)
            return ToolResult(text=f"the {name} tool failed unexpectedly", error=True)

    async def close(self) -> None:
        for tool in self._tools.values():
            try:
                await tool.close()
            except Exception:  # noqa: BLE001 - close the others anyway
                log.exception("could not close the assistant tool %s", tool.name)
