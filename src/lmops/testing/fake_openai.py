"""A fast fake OpenAI-compatible upstream (follows the OpenAI API as of openai-python 1.x / vLLM 0.6+).

It answers /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models with a
fixed answer (a word a token, cut at ``max_tokens`` with finish_reason "length", as engines do), streamed or
not, exactly in the wire format a vLLM server uses, including the final usage chunk when
``stream_options.include_usage`` is set. Behaviour switches let
tests simulate faults: ``fail`` (answer 500), ``hang`` (never answer), ``delay`` (seconds
before answering), ``chunk_delay`` (seconds between stream chunks). ``served`` names the
models it serves, as a vLLM server started with ``--lora-modules name=path`` serves its base
model and each adapter by name: any other model is a 404, as vLLM answers it. Answers echo the
requested model; ``models_seen`` counts the model names requests asked for, ``last_body`` is the last request's
JSON body. ``usage`` replaces the token counts
answers report (an upstream that miscounts).

Run: ``python -m lmops.testing.fake_openai --port 9000 [--fail|--hang|--delay S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from lmops.protocol.completions import prompts_of

WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]


@dataclass
class Behaviour:
    fail: bool = False  # completions answer 500
    fail_health: bool = False  # /models and /health answer 500 too (a broken server, not just a bad request)
    hang: bool = False
    delay: float = 0.0
    chunk_delay: float = 0.0
    words: int = len(WORDS)
    truncate_after: int | None = None  # end a stream after this many chunks, without [DONE]
    served: tuple[str, ...] | None = None  # the model names served (first: the base model); None: any
    answer: Any = None  # if set: the JSON every completion (or stream event) is, whatever its shape
    usage: dict[str, Any] | None = None  # if set: the usage every completion reports (a stream: its usage chunk)
    slots: int | None = None  # if set: at most this many requests are in their ``delay`` at once (an engine's
    # batch is full: the rest wait for a slot), so that throughput is the engine's, whatever the callers do


class FakeOpenAI:
    """A bare ASGI app: no framework, so that it costs as little CPU as possible."""

    def __init__(self, behaviour: Behaviour | None = None):
        self.behaviour = behaviour or Behaviour()
        self.requests = 0
        self.cancelled_streams = 0
        self.models_seen: Counter[str] = Counter()  # model names asked for (completions, embeddings)
        self.last_body: dict[str, Any] | None = None  # the last completion or embedding request, as sent
        self._slots: asyncio.Semaphore | None = None  # made on first use, on the server's event loop

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        path = scope["path"]
        body = await receive_body(receive)
        b = self.behaviour
        if (path.endswith("/models") or path == "/health") and not b.fail_health:
            await send_json(send, 200, {"object": "list", "data": _model_cards(b.served)})
            return
        self.requests += 1
        if b.hang:
            await asyncio.sleep(3600)
        if b.delay:
            if b.slots:
                self._slots = self._slots or asyncio.Semaphore(b.slots)
                async with self._slots:
                    await asyncio.sleep(b.delay)
            else:
                await asyncio.sleep(b.delay)
        if b.fail:
            await send_json(send, 500, {"error": {"message": "fake upstream failure", "type": "server_error",
                                              "param": None, "code": None}})
            return
        try:
            req = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            await send_json(send, 400, {"error": {"message": "bad json", "type": "invalid_request_error",
                                              "param": None, "code": None}})
            return
        model = req.get("model", "fake")
        self.models_seen[model] += 1
        self.last_body = req
        if b.served is not None and model not in b.served:
            await send_json(send, 404, {"error": {"message": f"The model `{model}` does not exist.",
                                              "type": "NotFoundError", "param": None, "code": 404}})
            return
        if b.answer is not None:  # an upstream that speaks broken OpenAI
            if req.get("stream"):
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/event-stream")]})
                await send({"type": "http.response.body",
                            "body": b"data: " + orjson.dumps(b.answer) + b"\n\ndata: [DONE]\n\n"})
            else:
                await send_json(send, 200, b.answer)
            return
        words = WORDS[: b.words] if b.words <= len(WORDS) else (WORDS * (b.words // len(WORDS) + 1))[: b.words]
        if path.endswith("/embeddings"):
            inputs = req.get("input")
            n = len(inputs) if isinstance(inputs, list) else 1
            await send_json(send, 200, {"object": "list", "model": model,
                                    "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                             for i in range(n)],
                                    "usage": {"prompt_tokens": 3 * n, "total_tokens": 3 * n}})
            return
        chat = path.endswith("/chat/completions")
        if not chat and not path.endswith("/completions"):
            await send_json(send, 404, {"error": {"message": "not found", "type": "invalid_request_error",
                                              "param": None, "code": None}})
            return
        # A completion's list of prompts gets n choices each, as vLLM answers it; all the same words here.
        n = (req.get("n") or 1) * (len(prompts_of(req["prompt"])) if "prompt" in req else 1)
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(words):  # a word a token: cut at max_tokens, as engines do
            words, finish = words[:limit], "length"
        usage = b.usage or {"prompt_tokens": 7, "completion_tokens": n * len(words),
                            "total_tokens": 7 + n * len(words)}
        rid, created = "cmpl-fake", int(time.time())
        if not req.get("stream"):
            text = "".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                       "logprobs": None} if chat else
                      {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
            choices = [choice] if n == 1 else [{**choice, "index": i} for i in range(n)]
            await send_json(send, 200, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                                    "created": created, "model": model, "choices": choices, "usage": usage})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        obj = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(watch_disconnect(receive, gone))
        try:
            for i, word in enumerate(words + [None]):
                if gone.is_set():  # the client went away: stop generating, as vLLM does
                    self.cancelled_streams += 1
                    return
                if b.truncate_after is not None and i >= b.truncate_after:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if chat:
                    delta = {} if word is None else ({"role": "assistant", "content": word} if i == 0
                                                     else {"content": word})
                    choice = {"index": 0, "delta": delta, "finish_reason": finish if word is None else None,
                              "logprobs": None}
                else:
                    choice = {"index": 0, "text": word or "", "finish_reason": finish if word is None else None,
                              "logprobs": None}
                chunk = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
                if include_usage:
                    chunk["usage"] = None
                if n == 1:
                    event = b"data: " + orjson.dumps(chunk) + b"\n\n"
                else:  # one event per choice, choices interleaved, as vLLM streams them
                    event = b"".join(b"data: " + orjson.dumps({**chunk, "choices": [{**choice, "index": i}]})
                                     + b"\n\n" for i in range(n))
                await send({"type": "http.response.body", "body": event, "more_body": True})
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
            if include_usage:
                chunk = {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                         "usage": usage}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        except (OSError, asyncio.CancelledError):
            self.cancelled_streams += 1
            raise
        finally:
            watcher.cancel()


async def serve_lifespan(receive, send) -> None:  # type: ignore[no-untyped-def]
    """Answer an ASGI lifespan scope (startup and shutdown have nothing to do in a bare fake app)."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def receive_body(receive) -> bytes:  # type: ignore[no-untyped-def]
    """A request's whole body from ASGI ``receive`` messages (also used by bench/floor_proxy.py)."""
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


def _model_cards(served: tuple[str, ...] | None) -> list[dict]:
    """vLLM's /v1/models: the base model, then each LoRA adapter with the base as its ``parent``."""
    if not served:
        return [{"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}]
    base = served[0]
    return [{"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": name,
             "parent": None if name == base else base} for name in served]


async def watch_disconnect(receive, gone: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    """Set ``gone`` when the client disconnects (what a streaming engine watches to stop generating)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def send_json(send, status: int, payload: Any) -> None:  # type: ignore[no-untyped-def]
    """Answer with ``payload`` as JSON (with its content-length)."""
    body = orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--fail", action="store_true")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--chunk-delay", type=float, default=0.0)
    a = p.parse_args()
    app = FakeOpenAI(Behaviour(fail=a.fail, hang=a.hang, delay=a.delay, chunk_delay=a.chunk_delay))
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False, loop="uvloop",
                http="httptools")


if __name__ == "__main__":
    main()
