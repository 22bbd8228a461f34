"""A raw HTTP/1.1 server for tests: each answer is the exact bytes a script writes, on a real socket.

``ScriptedServer(script)`` listens on 127.0.0.1 in a thread of its own (its own event loop, so that tests of
any kind, and a gateway in another thread, can use it). It reads each request (request line, headers, a
``content-length`` body), records it, and calls ``script(request, conn)``, an async function that answers by
writing bytes (``conn.write``), pausing (``asyncio.sleep``) and, if it wants, closing the connection
(``conn.close()``; the server then reads no more requests from it). What it records lets a test check what really
reached the server: every request (and on which connection), how many connections were opened, and which ones
the client had closed while the server still had bytes to send (a write to it failed: a script that keeps
writing learns it within two writes).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names in lowercase
    body: bytes
    connection: int  # the connection's number, from 0 in the order they were opened


@dataclass
class Conn:
    """One client connection, as the script sees it."""

    number: int
    writer: asyncio.StreamWriter
    closed: bool = False
    client_left: bool = False  # a write failed: the client had closed (or reset) the connection

    async def write(self, data: bytes) -> None:
        """Send ``data`` now; a client that has gone is recorded (``client_left``), not raised."""
        if self.closed:
            return
        if self.writer.transport.is_closing():  # the connection was lost (reset by the client)
            self.client_left = self.closed = True
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self.client_left = True
            self.closed = True

    def close(self) -> None:
        self.closed = True
        self.writer.close()


Script = Callable[[Request, Conn], Awaitable[None]]


@dataclass
class ScriptedServer:
    script: Script
    requests: list[Request] = field(default_factory=list)
    conns: list[Conn] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scripted-http")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the scripted server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for conn in self.conns:
            conn.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(len(self.conns), writer)
        self.conns.append(conn)
        try:
            while not conn.closed:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client closed the connection between requests
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                request = Request(method, target, headers, body, conn.number)
                self.requests.append(request)
                await self.script(request, conn)
        except asyncio.CancelledError:
            pass  # the server is stopping (a task ended by cancellation would be logged as an error by asyncio)
        finally:
            conn.close()
