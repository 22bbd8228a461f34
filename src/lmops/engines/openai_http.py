"""Any OpenAI-compatible HTTP server as an engine: vLLM, lmdeploy, TGI, llama.cpp server, Ollama, providers.

One aiohttp ``ClientSession`` per replica (made in ``start()``, closed in ``close()``), with its own pool of
keep-alive connections (``max_connections``). Streams are forwarded as they arrive: the SSE events of one network
read travel on as one batch. Usage is always requested (``stream_options.include_usage``) so accounting uses the
engine's own numbers. ``HTTP(S)_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` are honoured (``engines.proxy``: read once,
when the engine is built).

**Nothing is sent twice.** A request is sent once. What happens on a failure:

- *Before the request was handed to a connection* (connection refused, unknown host, TLS or proxy refusal, connect
  timeout): ``EngineUnavailable`` / ``EngineTimeout``, which the router may retry on another replica; the upstream
  has seen nothing.
- *After* (the connection closed or was reset, also a kept-alive one that the server closed just before the
  request went out; an answer that is not HTTP; a body cut short): ``EngineConnectionLost``, a 502 that is tried
  again nowhere, neither on this replica nor on another: the upstream may have received the request and be
  generating (a second generation would be billed twice), and which of the two happened cannot be told apart.
  aiohttp itself resends only idempotent methods (``GET /models`` of a health check), never a POST.
- A timeout and a 5xx answer stay what the router has always retried on another replica before the first byte
  (docs/architecture.md, "Retry only before the first byte").

**Timeouts** (``EngineTimeout``, a 504). Silence: ``timeout`` seconds without a byte (aiohttp's read timeout). An
upstream that trickles bytes (one a second, say) never trips that, so each kind of answer has a deadline too: a
non-streamed answer must arrive whole within ``answer_timeout`` of sending; a stream's headers within ``timeout``,
then a complete event at least every ``timeout`` seconds (bytes that never finish an event do not count), and the
whole stream within ``stream_timeout`` if one is set.

The pool keeps an idle connection ``KEEPALIVE`` seconds, less than common servers' own keep-alive timeouts
(uvicorn's 5 s, behind vLLM and most Python engines), so that a server rarely closes a connection just as a request
goes out on it.
"""

from __future__ import annotations

import asyncio
import base64
import math
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from lmops.engines import proxy as proxies
from lmops.engines.http_body import read_capped
from lmops.engines.base import (
    Body,
    Chunks,
    Engine,
    EngineConnectionLost,
    EngineError,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)

KEEPALIVE = 4.0  # seconds an idle pooled connection is kept
_DRAIN_LIMIT = 65536  # bytes read after [DONE] to reach the end of the body and keep the connection ...
_DRAIN_SECONDS = 1.0  # ... for at most this long (the client waits for it), else the connection is closed


class OpenAIHTTPEngine(Engine):
    kind = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        answer_timeout: float | None = None,
        stream_timeout: float | None = None,
        connect_timeout: float = 3.0,
        health_timeout: float = 2.0,
        max_connections: int = 1000,
        proxy: str | bool = True,
        ssl_context: ssl.SSLContext | None = None,
        max_image_bytes: int = 32 * 1024 * 1024,
    ):
        """``timeout``: seconds without a byte from the upstream (and to wait for a free connection of the pool), or
        without a complete event in a stream; ``answer_timeout``: for a whole non-streamed answer (default: 5 x
        ``timeout``); ``stream_timeout``: for a whole stream (default: none); ``connect_timeout``: to open a
        connection. ``proxy``: True to take it from the environment, False for none,
        or an http:// proxy URL (used whatever ``NO_PROXY`` says). ``ssl_context``: for https:// upstreams,
        instead of the system's default verification. ``max_image_bytes``: the largest image an image backend
        may answer. ValueError for an unusable URL, proxy or api key."""
        self.endpoint = base_url.rstrip("/")
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._headers = {"User-Agent": "lmops", "Accept": "*/*", "Content-Type": "application/json"}
        if api_key:
            if "\r" in api_key or "\n" in api_key or "\0" in api_key:
                raise ValueError(f"the api key for {self.endpoint} contains a line break (CR or LF) or NUL: "
                                 "it cannot be sent in a header")
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._proxy_setting = proxy  # image URLs an upstream answers with may be on other hosts
        self._proxy = proxies.select(proxy, self.endpoint)
        self._via = f" through the proxy {urlsplit(self._proxy).hostname}" if self._proxy else ""
        self._silence = timeout
        self._timeout = aiohttp.ClientTimeout(total=answer_timeout or 5 * timeout, connect=timeout,
                                              sock_connect=connect_timeout, sock_read=timeout)
        self._stream_timeout = aiohttp.ClientTimeout(total=stream_timeout, connect=timeout,
                                                     sock_connect=connect_timeout, sock_read=timeout)
        self._health_timeout = aiohttp.ClientTimeout(total=health_timeout)
        self._max_connections = max_connections
        self._max_image_bytes = max_image_bytes
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        self._urls = {path: URL(self.endpoint + path)
                      for path in ("/models", "/chat/completions", "/completions", "/embeddings",
                                   "/images/generations")}

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                             keepalive_timeout=KEEPALIVE, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),  # an upstream's cookies are not carried between clients
                skip_auto_headers=("Accept-Encoding",),  # no compression: a compressor may hold stream chunks back
                trust_env=False)  # the proxy is chosen once (engines.proxy), not looked up per request

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def health(self) -> bool:
        session = self._session
        if session is None:
            return False
        try:
            async with session.get(self._urls["/models"], proxy=self._proxy, timeout=self._health_timeout) as resp:
                await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            return False
        return resp.status < 500

    async def chat_completion(self, body: Body) -> Body:
        return await self._post("/chat/completions", body, "choices")

    def stream_chat_completion(self, body: Body) -> AsyncIterator[Chunks]:
        return self._stream("/chat/completions", body)

    async def completion(self, body: Body) -> Body:
        return await self._post("/completions", body, "choices")

    def stream_completion(self, body: Body) -> AsyncIterator[Chunks]:
        return self._stream("/completions", body)

    async def embeddings(self, body: Body) -> Body:
        return await self._post("/embeddings", body, "data")

    async def images(self, body: Body) -> Body:
        """POST ``/images/generations``; an image answered as a ``url`` is downloaded through this replica's
        session (http(s) only, at most ``max_image_bytes``) and put in ``b64_json``."""
        n = body.get("n")
        images = n if isinstance(n, int) and n > 1 else 1
        cap = images * (self._max_image_bytes * 4 // 3 + 4096) + 65536  # n images in base64, and their JSON
        answer = await self._post("/images/generations", body, "data", cap=cap)
        for item in answer["data"]:
            if not isinstance(item.get("b64_json"), str):
                item["b64_json"] = base64.b64encode(await self._download(item.get("url"))).decode("ascii")
                item.pop("url", None)
        return answer

    async def _download(self, url: Any) -> bytes:
        """An image the upstream answered with as a URL: its bytes, at most ``max_image_bytes``."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise EngineError(f"{self.endpoint} answered an image with neither b64_json nor an http(s) url")
        session = self._session
        if session is None:
            raise RuntimeError(f"the engine for {self.endpoint} was not started")
        limit = _Deadline(self._timeout, "the image it answered with")
        try:
            async with session.get(URL(url), proxy=proxies.select(self._proxy_setting, url),
                                   timeout=limit.timeout) as resp:
                if resp.status >= 400:
                    raise EngineError(f"{self.endpoint} answered with an image URL that answers {resp.status}")
                return await _read_capped(resp, self._max_image_bytes, f"an image from {self.endpoint}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(exc, " while sending an image", limit) from exc

    async def _send(self, path: str, body: Body, limit: _Deadline) -> aiohttp.ClientResponse:
        """POST ``body``; the response once its headers are in (interim 1xx answers skipped)."""
        session = self._session
        if session is None:
            raise RuntimeError(f"the engine for {self.endpoint} was not started")
        try:
            return await session.post(self._urls[path], data=orjson.dumps(body), proxy=self._proxy,
                                      timeout=limit.timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(exc, "", limit) from exc

    def _failure(self, exc: aiohttp.ClientError | TimeoutError, when: str, limit: _Deadline) -> EngineError:
        """The EngineError for an aiohttp failure (see the module's docstring)."""
        if isinstance(exc, TimeoutError):  # connect, pool, read or total timeout
            if limit.passed():
                return EngineTimeout(f"{self.endpoint}{self._via} did not send {limit.what} within "
                                     f"{limit.seconds:g} s", status=504)
            return EngineTimeout(f"{self.endpoint}{self._via} timed out{when}", status=504)
        if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ClientHttpProxyError)):  # nothing was sent
            return EngineUnavailable(f"{self.endpoint} unreachable{self._via}: {exc}")
        # the request was handed to a connection: never sent again
        return EngineConnectionLost(f"{self.endpoint}{self._via} broke the connection{when} "
                                    f"({type(exc).__name__}: {exc}); the request is not sent again")

    async def _post(self, path: str, body: Body, items: str, cap: int | None = None) -> Body:
        limit = _Deadline(self._timeout, "its whole answer")
        resp = await self._send(path, body, limit)
        try:
            content = await resp.read() if cap is None else await _read_capped(resp, cap, f"{self.endpoint}'s answer")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(exc, " while answering", limit) from exc
        finally:
            resp.release()
        if resp.status >= 400:
            raise _status_error(self.endpoint, resp.status, content)
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise EngineError(f"{self.endpoint} answered with invalid JSON") from exc
        problem = answer_problem(answer, items)
        if problem is not None:
            raise EngineError(f"{self.endpoint} answered with JSON that is not an OpenAI answer: {problem}")
        return answer

    async def _stream(self, path: str, body: Body) -> AsyncIterator[Chunks]:
        body = dict(body)
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        limit = _Deadline(self._stream_timeout, "the whole stream")
        try:
            async with asyncio.timeout(self._silence):  # the headers, even trickled
                resp = await self._send(path, body, limit)
        except TimeoutError as exc:
            raise EngineTimeout(f"{self.endpoint}{self._via} did not send its answer's headers within "
                                f"{self._silence:g} s", status=504) from exc
        try:
            if resp.status >= 400:
                async with asyncio.timeout(self._silence):  # an error body, even trickled
                    raise _status_error(self.endpoint, resp.status, await resp.read())
            content = resp.content
            pending = b""
            last_event = time.monotonic()
            while piece := await content.readany():  # what arrived since the last read (b"" at the end)
                events, pending = _sse_data(pending + piece)
                now = time.monotonic()
                if events:
                    last_event = now
                elif now - last_event > self._silence:  # bytes trickle in, no event is ever complete
                    raise EngineTimeout(f"{self.endpoint}{self._via} sent no complete stream event in "
                                        f"{self._silence:g} s", status=504)
                chunks: Chunks = []  # the events of one read travel on together
                for data in events:
                    if data == b"[DONE]":
                        if chunks:
                            yield chunks
                        await _drain(content)  # to the end of the body, so the connection can serve again
                        return
                    try:
                        chunks.append(self._chunk(data))
                    except EngineError:
                        if chunks:  # what came before the bad event still reaches the client
                            yield chunks
                        raise
                if chunks:
                    yield chunks
            raise EngineError(f"{self.endpoint} ended the stream without [DONE]")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(exc, " mid-stream", limit) from exc
        finally:
            resp.release()  # back to the pool only when the body was read to its end; else the connection closes

    def _chunk(self, data: bytes) -> Body:
        """One stream event's chunk; EngineError for an event that is not one (an error event included)."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise EngineError(f"{self.endpoint} sent an invalid stream event") from exc
        if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
            err = chunk["error"]
            raise EngineError(f"{self.endpoint}: {err.get('message', err) if isinstance(err, dict) else err}")
        problem = answer_problem(chunk, "choices", required=False)
        if problem is not None:
            raise EngineError(f"{self.endpoint} sent a stream event that is not an OpenAI chunk: {problem}")
        return chunk


class _Deadline:
    """The total time one request has (aiohttp's ``total``), to tell its expiry from the other timeouts."""

    __slots__ = ("timeout", "what", "started")

    def __init__(self, timeout: aiohttp.ClientTimeout, what: str):
        self.timeout, self.what, self.started = timeout, what, time.monotonic()

    @property
    def seconds(self) -> float:
        return self.timeout.total or math.inf

    def passed(self) -> bool:
        return time.monotonic() - self.started >= self.seconds - 0.01


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, what: str) -> bytes:
    """The whole body of ``resp``; EngineError (502) if it is more than ``cap`` bytes."""
    body = await read_capped(resp, cap)
    if body is None:
        raise EngineError(f"{what} is more than the {cap} bytes allowed")
    return body


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read what follows [DONE] (usually only the end of the chunked body), up to a limit of bytes and time."""
    left, until = _DRAIN_LIMIT, time.monotonic() + _DRAIN_SECONDS
    while left > 0 and not content.at_eof():
        piece = await content.readany()
        if not piece or time.monotonic() > until:
            return
        left -= len(piece)


def _sse_data(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The payloads of the complete ``data:`` lines in ``buffer``, and the incomplete rest."""
    lines = buffer.split(b"\n")
    rest = lines.pop()
    return [line[5:].strip() for line in lines if line.startswith(b"data:")], rest


def _status_error(endpoint: str, status: int, content: bytes) -> EngineError:
    message = _upstream_message(content) or f"HTTP {status}"
    if 400 <= status < 500 and status not in (407, 408, 429):  # 407: our proxy refused us, not the client's fault
        return EngineRejected(message, status=status, body=content)
    return EngineError(f"{endpoint} answered {status}: {message}", status=502, body=content)


def _upstream_message(content: bytes) -> str | None:
    try:
        data: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200].decode("utf-8", "replace") or None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        return str(err)
    return str(data)[:200]


def answer_problem(answer: Any, items: str, *, required: bool = True) -> str | None:
    """What keeps a parsed upstream answer from being one lmops can read, or None.

    It must be an object whose ``items`` ("choices" or "data") is a list of objects (a stream chunk may leave
    ``items`` out), and whose ``usage``, when there is one, holds whole, non-negative token counts. JSON of
    another shape is the upstream's failure (502, held against the replica), not a crash in lmops (500).
    """
    if not isinstance(answer, dict):
        return f"a JSON {type(answer).__name__}, not an object"
    listed = answer.get(items)
    if (listed is not None or required) and not (
            isinstance(listed, list) and all(isinstance(item, dict) for item in listed)):
        return f"{items!r} is not a list of objects"
    usage = answer.get("usage")
    if usage is None:
        return None
    if not isinstance(usage, dict):
        return "'usage' is not an object"
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        count = usage.get(name)
        if count is not None and not _whole(count):
            return f"usage.{name} is not a whole number of tokens"
    return None


def _whole(count: Any) -> bool:
    """A token count: a non-negative integer (written 17 or, by some servers, 17.0)."""
    if type(count) is int:
        return count >= 0
    return type(count) is float and math.isfinite(count) and count >= 0 and count.is_integer()
