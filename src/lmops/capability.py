"""What a capability (access, batch, and next chat, retrieval, evaluation, adapters) declares to the root.

A capability is one object built by the composition root (``lmops.services``) from the core and from the
narrow typed interfaces of other capabilities it needs. Its configuration is the ``Settings`` section named
``config_section``; its CLI commands are typer apps listed in its ``cli`` module (the CLI root mounts them).
Nothing here imports the root.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, Protocol

from fastapi import APIRouter

SecretSource = Callable[[], Awaitable[bytes | None]]  # the server secret, for what capabilities sign; None: none


class Capability(Protocol):
    config_section: ClassVar[str]

    def routers(self) -> Sequence[APIRouter]:
        """The HTTP routes it serves, bound to this instance."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
