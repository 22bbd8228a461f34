"""A lean pooled HTTP/1.1 client for talking to upstream engines (asyncio protocol + httptools parser).

Why not httpx: on the gateway's hot path httpx/httpcore/anyio cost about 2 ms of CPU per
request at 32 connections (a linear scan of the pool with a ``poll()`` per idle connection,
several lock and cancel-scope layers, each asking the loop for the current task). This client
does only what an upstream call needs, at a few tens of microseconds per request:

- one pool per upstream: keep-alive connections reused most-recent-first, at most
  ``max_connections`` in use at once (callers beyond that wait for a free one);
- request bodies sent whole; response bodies read whole or streamed chunk by chunk as they
  arrive (nothing is buffered beyond what the socket delivered);
- timeouts: ``connect_timeout`` to open a connection, ``timeout`` of silence while waiting for
  the response (as httpx's read timeout: it restarts whenever bytes arrive);
- errors: ``ConnectError`` (could not connect), ``Timeout`` (connect or read timeout),
  ``ProtocolError`` (connection broken or malformed response), all ``HTTPError``;
- a reused keep-alive connection that the server closed before answering is retried once on a
  fresh connection (the usual race with the server's keep-alive timeout).

http:// and https:// (TLS with the system's default verification, or the given ``ssl_context``),
directly or through an http:// proxy taken from ``HTTP(S)_PROXY`` / ``NO_PROXY`` as httpx does
(``engines.proxy``; chosen once per pool, so a direct pool does no extra work per request); no
redirects or HTTP/2, which upstream engines do not need.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools

from lmops.engines.proxy import open_tunnel, select


class HTTPError(Exception):
    """Any failure to get a response from the upstream."""


class ConnectError(HTTPError):
    """The connection could not be opened (refused, unknown host, TLS failure)."""


class Timeout(HTTPError):
    """Connecting, or waiting for the response, took longer than allowed."""


class ProtocolError(HTTPError):
    """The connection broke, or the upstream sent something that is not HTTP/1.1."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request/response exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.used = False  # served an exchange before (so it may have gone stale)
        self._waiter: asyncio.Future[None] | None = None
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False
        self.error: HTTPError | None = None
        self._until_close = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"invalid HTTP response: {exc}"))
            self.close()
            return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._until_close and self.headers_done and not self.complete:
            self.complete = True  # a body delimited by the end of the connection
        elif not self.complete:
            self._fail(ProtocolError("the upstream closed the connection before the response ended"))
        self._wake()

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        names = {n.lower() for n, _ in self.headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only meaningful inside the parser's callbacks
        self.complete = True

    # -- used by the pool and the response ------------------------------------------------------
    def send(self, data: bytes) -> None:
        self._begin()
        assert self.transport is not None
        self.transport.write(data)

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def wait(self, timeout: float) -> None:
        """Wait for more of the response (any bytes, its end, or an error); Timeout after ``timeout`` of silence.

        Every arrival of bytes ends the wait, so the silence is counted from the last bytes received.
        """
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, self._expire, waiter, timeout)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()
        if self.error is not None:
            raise self.error

    def _expire(self, waiter: asyncio.Future[None], timeout: float) -> None:
        if waiter.done():
            return
        self._fail(Timeout(f"no response for {timeout:g} s"))
        self.close()
        waiter.set_result(None)

    def _fail(self, error: HTTPError) -> None:
        if self.error is None:
            self.error = error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Response:
    """An upstream response whose headers have arrived; read or stream the body, then it goes back to the pool."""

    def __init__(self, pool: "Pool", conn: _Connection, timeout: float):
        self._pool = pool
        self._conn: _Connection | None = conn
        self._timeout = timeout
        self.status = conn.status
        self.headers = conn.headers

    async def read(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise ProtocolError("the response was already consumed")
        try:
            while not conn.complete:
                await conn.wait(self._timeout)
            return b"".join(conn.body)
        finally:
            self.release()

    async def next_bytes(self) -> bytes | None:
        """The body bytes that arrived since the last call (waiting for some), or None once the body has ended.

        A plain coroutine rather than an async generator, so that stopping early leaves nothing to finalize.
        """
        conn = self._conn
        if conn is None:
            return None
        while True:
            if conn.body:
                parts, conn.body = conn.body, []
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if conn.complete:
                self.release()
                return None
            try:
                await conn.wait(self._timeout)
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        """Give the connection back: kept alive when the response was read to its end, else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class Pool:
    """Keep-alive HTTP/1.1 connections to one upstream (scheme, host and port of ``base_url``)."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, timeout: float = 60.0,
                 connect_timeout: float = 3.0, max_connections: int = 1000, proxy: str | bool = True,
                 ssl_context: ssl.SSLContext | None = None):
        """``proxy``: True (default) to take it from the environment, False for none, or an http:// proxy URL
        (then used whatever ``NO_PROXY`` says).

        ``ssl_context``: for https:// upstreams, instead of the system's default verification.
        """
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self._ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        host_header = url.netloc.rsplit("@", 1)[-1]
        fixed = {"host": host_header, "user-agent": "lmops", "accept": "*/*", **(headers or {})}
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._target = self.prefix  # the request target before the path: origin form
        self._address = (self.host, self.port)  # where connections go
        self._where = f"{self.host}:{self.port}"
        self._proxy = select(proxy, url.scheme, self.host, self.port)
        if self._proxy is not None:
            self._where += f" through the proxy {self._proxy.host}:{self._proxy.port}"
            if self._ssl is None:  # http://: absolute-form requests to the proxy itself
                self._target = f"http://{host_header}{self.prefix}"
                self._address = (self._proxy.host, self._proxy.port)
                self._fixed_headers += self._proxy.auth_header
        self._idle: deque[_Connection] = deque()
        self._in_use = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def request(self, method: str, path: str, body: bytes | None = None, *,
                      content_type: bytes = b"application/json", timeout: float | None = None) -> Response:
        """Send a request and return once the response headers are in (the body is read from the Response)."""
        timeout = self.timeout if timeout is None else timeout
        head = [method.encode(), b" ", (self._target + path).encode(), b" HTTP/1.1\r\n", self._fixed_headers]
        if body is not None:
            head += [b"content-type: ", content_type, b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
        head.append(b"\r\n")
        if body:
            head.append(body)
        data = b"".join(head)
        await self._acquire_slot(timeout)
        try:
            conn = await self._connection(timeout)
            try:
                return await self._exchange(conn, data, timeout)
            except ProtocolError:
                if not (conn.used and not conn.received):
                    raise
            # A kept-alive connection that the server had already closed: try once on a new one.
            return await self._exchange(await self._connect(), data, timeout)
        except BaseException:
            self._free_slot()
            raise

    async def _exchange(self, conn: _Connection, data: bytes, timeout: float) -> Response:
        try:
            conn.send(data)
            while not conn.headers_done:
                await conn.wait(timeout)
        except BaseException:
            conn.close()
            raise
        conn.used = True
        return Response(self, conn, timeout)

    async def _connection(self, timeout: float) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # most recently used first: the least likely to have gone stale
            if not conn.closed:
                return conn
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self._proxy is not None and self._ssl is not None:  # https:// through a CONNECT tunnel
                conn = _Connection(loop)
                await asyncio.wait_for(open_tunnel(self._proxy, self.host, self.port, self._ssl, conn),
                                       self.connect_timeout)
            else:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: _Connection(loop), *self._address, ssl=self._ssl,
                                           server_hostname=self.host if self._ssl else None),
                    self.connect_timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"could not connect to {self._where} in {self.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"could not connect to {self._where}: {exc}") from exc
        return conn

    def release(self, conn: _Connection) -> None:
        if conn.reusable() and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()
        self._free_slot()

    async def _acquire_slot(self, timeout: float) -> None:
        if self._in_use < self.max_connections and not self._waiting:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)  # the slot is handed over by _free_slot
        except asyncio.TimeoutError:
            raise Timeout(f"no free connection to {self.host}:{self.port} in {timeout:g} s") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # handed over just as we gave up: pass it on
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

    def _free_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter: _in_use stays
                return
        self._in_use -= 1

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
