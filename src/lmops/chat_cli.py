"""Stream a chat answer to a terminal, from a running lmops or from an in-process engine."""

from __future__ import annotations

from typing import Any, TextIO

import httpx
import orjson

from lmops.config import Settings


async def stream_answer(settings: Settings, body: dict[str, Any], url: str | None, api_key: str | None,
                        out: TextIO) -> None:
    body = {**body, "stream": True}
    if url:
        await _remote(url, body, api_key, out)
    else:
        await _local(settings, body, out)
    out.write("\n")
    out.flush()


async def _remote(url: str, body: dict[str, Any], api_key: str | None, out: TextIO) -> None:
    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5)) as client:
        try:
            async with client.stream("POST", f"{base}/chat/completions", json=body, headers=headers) as resp:
                if resp.status_code >= 400:
                    data = orjson.loads(await resp.aread())
                    raise RuntimeError(f"HTTP {resp.status_code}: {data.get('error', {}).get('message', data)}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = orjson.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"].get("message", "stream failed"))
                    for choice in chunk.get("choices", []):
                        out.write(choice.get("delta", {}).get("content") or "")
                        out.flush()
        except httpx.ConnectError as exc:
            raise RuntimeError(f"cannot reach lmops at {base}: {exc}") from None


async def _local(settings: Settings, body: dict[str, Any], out: TextIO) -> None:
    from lmops.engines.base import EngineError
    from lmops.engines.factory import build_engines
    from lmops.protocol.chat import ChatCompletionRequest
    from lmops.routing.replicas import Deployment
    from lmops.routing.router import Router
    from lmops.serving.inference import upstream_body

    target = Router([Deployment(m) for m in settings.models], settings.health).find(body["model"])
    if target is None:
        raise RuntimeError(f"unknown model {body['model']!r}")
    engine = build_engines(target.config, settings)[0]
    try:
        await engine.start()
    except EngineError as exc:  # e.g. a llama.cpp build that crashes on this CPU: said without a traceback
        raise RuntimeError(exc.message) from None
    try:
        wire = upstream_body(ChatCompletionRequest.model_validate(body), target)
        async for chunks in engine.stream_chat_completion(wire):
            for chunk in chunks:
                for choice in chunk.get("choices", []):
                    out.write(choice.get("delta", {}).get("content") or "")
            out.flush()
    finally:
        await engine.close()
