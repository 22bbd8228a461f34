"""A minimal pipelined Redis connection for the one call on the request path: the admission script.

redis-py spends ~0.4 ms of CPU per command here (connection pool, command packing, its parser
and its locks), more than the rest of a gateway request. Admission needs one command shape,
``EVALSHA sha n keys... spec``, whose reply is a bulk string or an error. This connection writes
each call as it comes (calls made in the same loop step go out in one write) and matches the
replies in order. Everything else (loading the script, seeding, batched updates) stays on redis-py.

Failures are loud and never hang: a lost connection fails every call waiting on it (the next call
reconnects), and a reply that takes longer than ``timeout`` fails the calls and drops the
connection. ``NoScript`` tells the caller to load the script again (Redis restarted or was flushed).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any


class RespError(Exception):
    """Redis answered with an error, or the connection failed."""


class NoScript(RespError):
    """The script is not loaded on this Redis (it restarted or was flushed)."""


def _command(parts: list[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: "PipelinedScript"):
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self.owner._replies(self.buffer)
        except RespError as exc:  # not a reply we can read: nothing after it can be matched either
            assert self.transport is not None
            self.transport.abort()
            self.owner._lost(exc, self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(RespError(f"connection to Redis lost: {exc or 'closed'}"), self.transport)


class PipelinedScript:
    """Calls one Lua script by its SHA over one pipelined connection."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, timeout: float = 5.0):
        self._address = (host, port)
        self._hello: list[list[bytes]] = []
        if password:
            self._hello.append([b"AUTH", *([username.encode()] if username else []), password.encode()])
        if db:
            self._hello.append([b"SELECT", str(db).encode()])
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._waiting: deque[tuple[asyncio.Future[bytes], float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None

    async def call(self, sha: str, keys: list[str], args: list[str]) -> bytes:
        if self._transport is None or self._transport.is_closing():
            await self._connect()
        assert self._transport is not None
        parts = [b"EVALSHA", sha.encode(), str(len(keys)).encode()]
        parts += [k.encode() for k in keys]
        parts += [a.encode() for a in args]
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append((future, time.monotonic() + self._timeout))
        self._transport.write(_command(parts))
        if self._watchdog is None:
            self._arm()
        return await future

    async def close(self) -> None:
        transport = self._transport
        self._lost(RespError("connection closed"))
        if transport is not None:
            transport.close()

    # -- connection ---------------------------------------------------------------------------
    async def _connect(self) -> None:
        if self._connecting is not None:  # another call is connecting: share its outcome
            await asyncio.shield(self._connecting)
            return
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), *self._address), self._timeout)
            self._transport = transport  # type: ignore[assignment]
            for command in self._hello:  # AUTH / SELECT: their +OK replies come first, in order
                future: asyncio.Future[bytes] = loop.create_future()
                self._waiting.append((future, time.monotonic() + self._timeout))
                transport.write(_command(command))  # type: ignore[attr-defined]
                if self._watchdog is None:
                    self._arm()
                await future
        except BaseException as exc:
            error = exc if isinstance(exc, RespError) else RespError(f"cannot connect to Redis: {exc!r}")
            self._connecting.set_exception(error)
            self._connecting.exception()  # retrieved: waiters re-raise it
            self._connecting = None
            dropped, self._transport = self._transport, None
            if dropped is not None:
                dropped.close()
            raise error from None
        self._connecting.set_result(None)
        self._connecting = None

    def _lost(self, error: RespError, transport: asyncio.Transport | None = None) -> None:
        """Fail the calls waiting on ``transport`` (default: the current one)."""
        if transport is not None and transport is not self._transport:
            return  # an earlier connection, already replaced: its calls were failed when it was dropped
        self._transport = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _arm(self) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(min(1.0, self._timeout), self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._watchdog = None
        if self._waiting and self._waiting[0][1] <= time.monotonic():
            transport = self._transport
            self._lost(RespError(f"Redis did not answer within {self._timeout:g} s"))
            if transport is not None:
                transport.abort()  # replies are matched by order: a late one cannot be matched any more
        elif self._waiting:
            self._arm()

    # -- replies ------------------------------------------------------------------------------
    def _replies(self, buffer: bytearray) -> None:
        while buffer:
            reply, used = _parse(buffer)
            if used == 0:
                return  # incomplete
            del buffer[:used]
            if not self._waiting:
                return  # a reply nobody waits for (its caller timed out): the connection is being dropped
            future, _ = self._waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, RespError):
                future.set_exception(reply)
            else:
                future.set_result(reply)


def _parse(buffer: bytearray) -> tuple[Any, int]:
    """One reply from the front of ``buffer``: (value, bytes used), or (None, 0) if it is incomplete.

    Only the reply types these calls get: simple strings, errors, bulk strings and integers.
    """
    end = buffer.find(b"\r\n")
    if end < 0:
        return None, 0
    kind, line = buffer[0:1], bytes(buffer[1:end])
    if kind == b"$":
        size = int(line)
        if size < 0:
            return b"", end + 2
        stop = end + 2 + size
        if len(buffer) < stop + 2:
            return None, 0
        return bytes(buffer[end + 2:stop]), stop + 2
    if kind == b"-":
        text = line.decode(errors="replace")
        return (NoScript(text) if text.startswith("NOSCRIPT") else RespError(text)), end + 2
    if kind in (b"+", b":"):
        return line, end + 2
    raise RespError(f"unexpected reply from Redis: {bytes(buffer[:40])!r}")
