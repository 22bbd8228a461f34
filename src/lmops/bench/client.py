"""One streamed chat completion, timed as its user sees it.

Times are seconds on the run's clock (``time.perf_counter`` minus the run's start). A request's clock starts at
its *scheduled* time, not when it left: a request that waited for a free connection or slot counts its wait.
Output tokens come from the endpoint's ``usage`` (``stream_options.include_usage``); an endpoint that sends
none is counted by its streamed content chunks (most engines stream a token a chunk), and the record says so
(``tokens_from``: ``"usage"`` or ``"chunks"``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass(slots=True)
class Record:
    """One request's measurements (a line of requests.jsonl)."""

    target: str
    level: str  # "c=8" (concurrency) or "rate=4" (requests/s)
    round: int
    conversation: int  # the job index within its level; turns of one conversation share it
    turn: int
    kind: str  # the prompt's expected answer length (built-in set) or "dataset"
    scheduled: float  # when it was due (run clock)
    queued: float = 0.0  # seconds between scheduled and sent
    ttft: float | None = None  # time to first token
    ttst: float | None = None  # time to second token
    tpot: float | None = None  # time per output token after the first: (e2e - ttft) / (tokens - 1)
    e2e: float | None = None  # scheduled to end of stream
    output_tokens: int = 0
    tokens_from: str = "usage"
    prompt_tokens: int | None = None
    tok_per_s: float | None = None  # output tokens / e2e: the speed this user saw
    error: str | None = None  # None: succeeded; else connect, timeout, http_503, truncated, empty, ...
    itl: list[float] = field(default_factory=list)  # inter-token latencies (between content chunks)

    def dumps(self) -> bytes:
        return orjson.dumps(self)


def request_body(model: str, messages: list[dict[str, Any]], max_tokens: int, extra: dict[str, Any]) -> bytes:
    return orjson.dumps({**extra, "model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
                         "stream_options": {"include_usage": True}})


async def stream_chat(session: aiohttp.ClientSession, url: str, body: bytes, rec: Record, t0: float,
                      keep_text: bool = False) -> str:
    """Send ``body``, read its stream, fill ``rec``; returns the answer's text when ``keep_text`` (multi-turn)."""
    clock = time.perf_counter
    rec.queued = clock() - t0 - rec.scheduled
    stamps: list[float] = []
    pieces: list[str] = []
    usage: dict[str, Any] | None = None
    done = False
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
            if resp.status >= 400:
                await resp.read()
                rec.error = f"http_{resp.status}"
                return ""
            buf = b""
            async for data in resp.content.iter_any():
                now = clock() - t0
                buf += data
                while True:
                    end = buf.find(b"\n")
                    if end < 0:
                        break
                    line, buf = buf[:end].rstrip(b"\r"), buf[end + 1:]
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    chunk = orjson.loads(payload)
                    if not isinstance(chunk, dict):
                        rec.error = "bad_stream"
                        return ""
                    if chunk.get("error"):
                        rec.error = "stream_error"
                        return ""
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or delta.get("reasoning_content")
                        if text:
                            stamps.append(now)
                            if keep_text:
                                pieces.append(text)
    except asyncio.TimeoutError:
        rec.error = "timeout"
        return ""
    except aiohttp.ClientConnectorError:
        rec.error = "connect"
        return ""
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
        rec.error = "disconnected"
        return ""
    except aiohttp.ClientError:
        rec.error = "client_error"
        return ""
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        rec.error = "bad_stream"
        return ""
    end_time = clock() - t0
    if not done:
        rec.error = "truncated"
        return ""
    if not stamps:
        rec.error = "empty"
        return ""
    fill_timings(rec, stamps, end_time, usage)
    return "".join(pieces)


def fill_timings(rec: Record, stamps: list[float], end: float, usage: dict[str, Any] | None) -> None:
    """Derive a successful request's latencies from its token times (run clock) and end."""
    tokens = usage.get("completion_tokens") if usage else None
    if isinstance(tokens, int) and tokens > 0:
        rec.output_tokens = tokens
        prompt = usage.get("prompt_tokens") if usage else None
        rec.prompt_tokens = prompt if isinstance(prompt, int) else None
    else:
        rec.output_tokens, rec.tokens_from = len(stamps), "chunks"
    rec.ttft = stamps[0] - rec.scheduled
    rec.ttst = stamps[1] - rec.scheduled if len(stamps) > 1 else None
    rec.itl = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    rec.e2e = end - rec.scheduled
    rec.tpot = (rec.e2e - rec.ttft) / (rec.output_tokens - 1) if rec.output_tokens > 1 else None
    rec.tok_per_s = rec.output_tokens / rec.e2e if rec.e2e > 0 else None
