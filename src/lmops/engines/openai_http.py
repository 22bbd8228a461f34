"""Any OpenAI-compatible HTTP server as an engine: vLLM, lmdeploy, TGI, llama.cpp server, Ollama, providers.

One pool of keep-alive connections per upstream (``engines.http1``, a lean HTTP/1.1 client:
httpx cost more CPU per request than the rest of the gateway together). Streams are forwarded
chunk by chunk as they arrive, and usage is always requested (``stream_options.include_usage``)
so accounting uses the engine's own numbers. Like httpx, it honours the ``HTTP_PROXY`` /
``HTTPS_PROXY`` / ``NO_PROXY`` environment variables (http:// proxies; https:// upstreams through a
CONNECT tunnel).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import orjson

from lmops.engines import http1
from lmops.engines.base import (
    Body,
    Chunks,
    Engine,
    EngineError,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)


class OpenAIHTTPEngine(Engine):
    kind = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 3.0,
        health_timeout: float = 2.0,
        max_connections: int = 1000,
    ):
        self.endpoint = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._health_timeout = health_timeout
        self._pool = http1.Pool(self.endpoint, headers=headers, timeout=timeout, connect_timeout=connect_timeout,
                                max_connections=max_connections)

    async def close(self) -> None:
        await self._pool.close()

    async def health(self) -> bool:
        try:
            resp = await self._pool.request("GET", "/models", timeout=self._health_timeout)
            await resp.read()
        except http1.HTTPError:
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

    async def _post(self, path: str, body: Body, items: str) -> Body:
        try:
            resp = await self._pool.request("POST", path, orjson.dumps(body))
            content = await resp.read()
        except http1.Timeout as exc:
            raise EngineTimeout(f"{self.endpoint} timed out", status=504) from exc
        except http1.HTTPError as exc:
            raise EngineUnavailable(f"{self.endpoint} unreachable: {type(exc).__name__}") from exc
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
        try:
            resp = await self._pool.request("POST", path, orjson.dumps(body))
        except http1.Timeout as exc:
            raise EngineTimeout(f"{self.endpoint} timed out", status=504) from exc
        except http1.HTTPError as exc:
            raise EngineUnavailable(f"{self.endpoint} unreachable: {type(exc).__name__}") from exc
        try:
            if resp.status >= 400:
                raise _status_error(self.endpoint, resp.status, await resp.read())
            pending = b""
            while (piece := await resp.next_bytes()) is not None:
                events, pending = _sse_data(pending + piece)
                chunks: Chunks = []  # the events of one read travel on together
                for data in events:
                    if data == b"[DONE]":
                        if chunks:
                            yield chunks
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
        except http1.Timeout as exc:
            raise EngineTimeout(f"{self.endpoint} timed out mid-stream", status=504) from exc
        except http1.HTTPError as exc:
            raise EngineUnavailable(f"{self.endpoint} broke the stream: {type(exc).__name__}") from exc
        finally:
            resp.release()

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


def _sse_data(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The payloads of the complete ``data:`` lines in ``buffer``, and the incomplete rest."""
    lines = buffer.split(b"\n")
    rest = lines.pop()
    return [line[5:].strip() for line in lines if line.startswith(b"data:")], rest


def _status_error(endpoint: str, status: int, content: bytes) -> EngineError:
    message = _upstream_message(content) or f"HTTP {status}"
    if 400 <= status < 500 and status not in (408, 429):
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
