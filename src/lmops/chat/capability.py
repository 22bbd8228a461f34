"""Chat as a capability: the chat service with its API routes (config section ``chat``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from fastapi import APIRouter

from lmops.chat.routes import chat_router
from lmops.chat.service import ChatService


class ChatCapability(ChatService):
    config_section: ClassVar[str] = "chat"

    def routers(self) -> Sequence[APIRouter]:
        return [chat_router(self)]
