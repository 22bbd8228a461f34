"""The HTTP server lmops runs on: uvicorn (uvloop, httptools), writing each response in one system call.

uvicorn writes a response's status line and headers, then each body part, with one ``transport.write``
apiece, and uvloop sends every write at once: two ``send()`` calls for a plain JSON answer. On loopback
and in most VMs a ``send()`` costs far more than the bytes it carries (the kernel runs the receiver's
TCP path in the sender's call), so the second one was about a fifth of lmops's CPU per proxied request.
``CoalescingTransport`` holds what is written during one turn of the event loop and sends it as one
write at the start of the next turn: a response's headers and body leave together, and a client that
pipelines gets several answers in one segment. Nothing waits on a timer: a held write goes out after the
callbacks already queued have run, microseconds later.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps a transport: writes made in the same event-loop turn leave in one ``write``.

    Everything but writing and closing is the wrapped transport's (flow control included: the protocol
    still gets ``pause_writing`` from it, and at most one turn's writes are held here).
    """

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data) if not isinstance(data, bytes) else data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def flush(self) -> None:
        """Send what is held now (a no-op when nothing is)."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # a response followed by "connection: close" still reaches the client
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


def server_options(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` serving the way ``lmops serve`` does.

    Without uvicorn's proxy-headers middleware (lmops reads neither the client's address nor the scheme, and
    that layer costs a coroutine and a scan of the headers per request) and without its ``server: uvicorn``
    header (uvicorn checks every response header with two regular expressions, and this one tells a client
    nothing it needs).
    """
    return {"loop": "uvloop", "http": CoalescingHttpToolsProtocol, "access_log": False, "proxy_headers": False,
            "server_header": False, **overrides}
