"""Chat as a capability: the chat service with its API routes and the web UI (config section ``chat``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from fastapi import APIRouter

from lmops.chat.routes import chat_router
from lmops.chat.service import ChatService
from lmops.chat.webui import web_router


class ChatCapability(ChatService):
    config_section: ClassVar[str] = "chat"

    def routers(self) -> Sequence[APIRouter]:
        return [chat_router(self), web_router()]
