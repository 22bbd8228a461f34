"""The assistant as a capability (config section ``assistant``): its tools, and its model name answered through
the core's virtual-model seam (``InferenceService.virtual``) when ``function_model`` and ``default_model`` are set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from fastapi import APIRouter

from lmops.assistant.service import Assistant
from lmops.assistant.tools.image import ImageMaker
from lmops.assistant.tools.registry import ToolRegistry
from lmops.core import Core


class AssistantCapability:
    config_section: ClassVar[str] = "assistant"

    def __init__(self, core: Core, images: ImageMaker | None = None):
        """``images``: lmops's image generation (the images capability), for the image tool."""
        config = core.settings.assistant
        self.tools = ToolRegistry.from_config(config.tools, images)
        self.assistant = Assistant(config, core.inference, self.tools)
        core.inference.virtual[config.name] = self.assistant

    def routers(self) -> Sequence[APIRouter]:
        return []  # served on /v1/chat/completions, through the core

    async def start(self) -> None:
        return None  # tools open their sessions and worker at first use

    async def stop(self) -> None:
        await self.tools.close()
