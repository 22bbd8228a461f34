"""Continuous batching on llama.cpp: concurrent generations decoded together.

One thread owns a llama.cpp context holding ``parallel`` sequences, each with its own slice of the KV cache
(``context_length`` cells). Each step is one ``llama_decode`` of one batch: the next token of every sequence that
is generating, and the next chunk of every prompt still being read (prefill shares the step's token budget, so a
long prompt takes several steps while the others keep generating). After the decode each sequence samples from
its own row of logits with its own sampler chain (temperature, top-k/p, penalties, seed, logit_bias, grammar).
Waiting generations take a free slot between steps; a cancelled one leaves before the next step and its KV cells
are freed. A slot whose generation ended keeps its cells: the next prompt given that slot (the free one sharing the
longest prefix with it: the chat template's system prompt, a conversation's earlier turns) decodes only the rest,
as llama-cpp-python's ``Llama.generate`` reuses its context. A seeded request always starts afresh, so that the
same seed gives the same answer.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmops.engines.base import EngineFault
from lmops.engines.llamacpp_jobs import Job, Output
from lmops.engines.token_logprobs import TokenLogprob, token_logprob

# Positions of one prompt whose logits one step keeps, when the prompt's tokens are scored (echo with logprobs):
# llama.cpp keeps a vocabulary's floats for each of them (prompt_logprobs.py says why that is bounded).
SCORE_CHUNK = 64


@dataclass
class _Sequence:
    """A generation holding a slot: its sequence id in the context, and how far it has got."""

    job: Job
    seq_id: int
    sampler: Any  # llama_cpp._internals.LlamaSampler
    output: Output
    started: float
    todo: list[int]  # prompt tokens not decoded yet
    decoded: list[int]  # the tokens its cells hold (the position of the next one is their count)
    row: int | None = None  # its row of logits in the batch just decoded (None: it has none to sample from)
    next_token: int | None = None  # sampled, to be decoded in the next step
    entries: list[TokenLogprob] = field(default_factory=list)  # the prompt's scored tokens (echo with logprobs)
    rows: list[tuple[int, int]] = field(default_factory=list)  # (row, prompt index) of scored prompt positions
    scored: bool = False  # the prompt's entries have gone out


class BatchRunner:
    """The model thread of a batched engine: ``submit`` jobs from any thread; each one's future completes when the
    thread is done with it (its result or failure already sent to the job)."""

    def __init__(self, llm: Any, parallel: int, context_length: int, threads: int, threads_batch: int,
                 n_batch: int = 512):
        import llama_cpp
        from llama_cpp import _internals

        self._llama_cpp = llama_cpp
        self._llm = llm
        self.parallel = parallel
        self.n_batch = n_batch
        # The Llama object's settings (no flash attention, its RoPE scaling...): the same numerics, so the same
        # greedy answers, as its own generate.
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = parallel * context_length
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = parallel
        params.kv_unified = False  # each sequence attends over its own cells only
        params.n_threads, params.n_threads_batch = threads, threads_batch
        self._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._n_vocab = llm.n_vocab()
        self._waiting: collections.deque[tuple[Job, concurrent.futures.Future[None]]] = collections.deque()
        self._futures: dict[int, concurrent.futures.Future[None]] = {}
        self._slots: list[_Sequence | None] = [None] * parallel
        self._cached: list[list[int]] = [[] for _ in range(parallel)]  # what each free slot's cells still hold
        self._wake = threading.Condition()
        self._closing = False
        self.recent_seconds = 1.0  # the latest generation's duration, for Retry-After
        self.last_generation: tuple[str, int] = ("", 0)
        self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._thread.start()

    # -- any thread ------------------------------------------------------------------------------
    def submit(self, job: Job) -> concurrent.futures.Future[None]:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._wake:
            if self._closing:
                raise EngineFault("the embedded model is shutting down", status=503)
            self._waiting.append((job, done))
            self._wake.notify()
        return done

    def active(self) -> int:
        """Generations holding a slot."""
        return sum(1 for s in self._slots if s is not None)

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # -- the model thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._admit():
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - the batch fails, the thread goes on with the next
                    for seq in self._slots:
                        if seq is not None:
                            self._fail(seq.job, seq.seq_id, exc)
        finally:
            with contextlib.suppress(RuntimeError):  # an event loop already closed
                for seq in self._slots:
                    if seq is not None:
                        self._end(seq, "cancelled")
                for job, done in self._waiting:
                    job.fail(EngineFault("the embedded model is shutting down", status=503))
                    done.set_result(None)
            self._llama_cpp.llama_batch_free(self._batch)
            self._ctx.close()

    def _admit(self) -> bool:
        """Gives free slots to waiting jobs (waiting for one when nothing runs); False once closing."""
        with self._wake:
            while not self._closing and not self._waiting and self.active() == 0:
                self._wake.wait()
            if self._closing:
                return False
            taken = [self._waiting.popleft() for _ in range(min(len(self._waiting), self._slots.count(None)))]
        # Outside the lock: a grammar's sampler takes a while to build, and submit() runs on the event loop.
        for job, done in taken:
            if job.cancelled.is_set():
                job.finish(Output(job, self._llm).close("cancelled"))
                done.set_result(None)
                continue
            seq_id = self._slot_for(job)
            self._futures[seq_id] = done
            try:
                self._slots[seq_id] = self._sequence(job, seq_id)
            except Exception as exc:  # noqa: BLE001 - a job that cannot start fails alone
                self._fail(job, seq_id, exc)
        return True

    def _reusable(self, job: Job, seq_id: int) -> int:
        """How many of the job's prompt tokens slot ``seq_id`` holds already (at least one is decoded again, for
        its logits); 0 for a seeded job or one that scores its prompt."""
        if job.seed is not None or job.score_from is not None:
            return 0
        common = 0
        for a, b in zip(self._cached[seq_id], job.prompt, strict=False):
            if a != b:
                break
            common += 1
        return min(common, len(job.prompt) - 1)

    def _slot_for(self, job: Job) -> int:
        free = [i for i, s in enumerate(self._slots) if s is None]
        return max(free, key=lambda i: self._reusable(job, i))

    def _sequence(self, job: Job, seq_id: int) -> _Sequence:
        kept = self._reusable(job, seq_id)
        if not (kept and self._llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq_id, kept, -1)):
            kept = 0
            self._llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq_id, -1, -1)
        self._cached[seq_id] = []
        seq = _Sequence(job=job, seq_id=seq_id, sampler=self._sampler(job), output=Output(job, self._llm),
                        started=time.monotonic(), todo=job.prompt[kept:], decoded=job.prompt[:kept])
        if job.score_from == 0:
            seq.entries.append(TokenLogprob(seq.output.piece(job.prompt[0]), None))
        return seq

    def _sampler(self, job: Job) -> Any:
        """The job's sampler chain, as llama-cpp-python's ``Llama.generate`` builds it (logit_bias natively)."""
        from llama_cpp import _internals

        p = job.params
        sampler = _internals.LlamaSampler()
        if job.bias:
            sampler.add_logit_bias(self._n_vocab, job.bias)
        sampler.add_penalties(self._n_vocab, self._llm.last_n_tokens_size, p["repeat_penalty"],
                              p["frequency_penalty"], p["presence_penalty"])
        if job.grammar is not None:
            sampler.add_grammar(self._llm._model, job.grammar)
        seed = secrets.randbits(31) if job.seed is None else job.seed
        if p["temp"] < 0:
            sampler.add_dist(seed)
        elif p["temp"] == 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(p["top_k"])
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(p["top_p"], 1)
            sampler.add_min_p(p["min_p"], 1)
            sampler.add_temp(p["temp"])
            sampler.add_dist(seed)
        return sampler

    def _step(self) -> None:
        """One decode over every active sequence, then each samples its next token."""
        batch = self._batch
        batch.n_tokens = 0
        for seq in self._slots:
            if seq is not None and seq.job.cancelled.is_set():
                self._end(seq, "cancelled")
        live = [s for s in self._slots if s is not None]
        for seq in live:  # generating sequences first: one token each, always in this step
            seq.row = None
            if seq.next_token is not None:
                seq.row = self._add(seq, seq.next_token, True)
                seq.next_token = None
        for seq in live:  # then prompts, in chunks, while the batch has room
            room = self.n_batch - batch.n_tokens
            if not seq.todo or room <= 0:
                continue
            scoring = seq.job.score_from is not None
            take = min(room, len(seq.todo), SCORE_CHUNK if scoring else room)
            seq.rows = []
            for i, token in enumerate(seq.todo[:take]):
                last = i == take - 1 and take == len(seq.todo)
                row = self._add(seq, token, last or scoring)
                if scoring:
                    seq.rows.append((row, len(seq.decoded) - 1))
                if last:
                    seq.row = row
            del seq.todo[:take]
        if batch.n_tokens == 0:
            return
        code = self._llama_cpp.llama_decode(self._ctx.ctx, batch)
        if code != 0:
            for seq in live:
                self._fail(seq.job, seq.seq_id, RuntimeError(f"llama_decode returned {code}"))
            return
        for seq in live:
            try:
                self._after_decode(seq)
            except Exception as exc:  # noqa: BLE001 - any failure goes back to its request alone
                self._fail(seq.job, seq.seq_id, exc)

    def _add(self, seq: _Sequence, token: int, logits: bool) -> int:
        batch = self._batch
        row = batch.n_tokens
        batch.token[row] = token
        batch.pos[row] = len(seq.decoded)
        batch.n_seq_id[row] = 1
        batch.seq_id[row][0] = seq.seq_id
        batch.logits[row] = logits
        batch.n_tokens = row + 1
        seq.decoded.append(token)
        return row

    def _logits(self, row: int) -> np.ndarray:
        return np.ctypeslib.as_array(self._llama_cpp.llama_get_logits_ith(self._ctx.ctx, row),
                                     shape=(self._n_vocab,))

    def _after_decode(self, seq: _Sequence) -> None:
        job = seq.job
        if seq.rows:  # the prompt's tokens, scored: each position's logits predict the next prompt token
            prompt = job.prompt
            for row, index in seq.rows:
                if index + 1 < len(prompt):
                    seq.entries.append(token_logprob(self._logits(row), prompt[index + 1], job.top_logprobs or 0,
                                                     seq.output.piece))
            seq.rows = []
        if seq.row is None:
            return
        if job.score_from is not None and not seq.scored:  # the prompt is read: its entries go out
            seq.scored = True
            job.emit("prompt", list(seq.entries))
            seq.output = Output(job, self._llm, seq.entries)
        if job.max_tokens == 0:
            self._end(seq)
            return
        row = seq.row
        token = self._llama_cpp.llama_sampler_sample(seq.sampler.sampler, self._ctx.ctx, row)
        if seq.output.add(token, lambda: self._logits(row)):
            self._end(seq)
        else:
            seq.next_token = token

    def _end(self, seq: _Sequence, finish: str | None = None) -> None:
        """The generation is over (``finish``: why, when not its own doing): its result goes out, its slot frees."""
        generated = seq.output.close(finish)
        self.last_generation = (generated.finish, generated.tokens)
        self.recent_seconds = max(0.1, time.monotonic() - seq.started)
        seq.job.finish(generated)
        self._free(seq.seq_id, keep=finish is None)

    def _fail(self, job: Job, seq_id: int, exc: BaseException) -> None:
        job.fail(EngineFault(f"generation failed: {type(exc).__name__} {exc}".rstrip(), status=500))
        self._free(seq_id)

    def _free(self, seq_id: int, keep: bool = False) -> None:
        """Frees the slot; ``keep``: its cells stay, for a next prompt that starts the same (a cancelled or failed
        generation's are removed at once)."""
        seq = self._slots[seq_id]
        if seq is not None:
            seq.sampler.close()
        self._slots[seq_id] = None
        if keep and seq is not None:
            self._cached[seq_id] = seq.decoded
        else:
            self._cached[seq_id] = []
            self._llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq_id, -1, -1)
        done = self._futures.pop(seq_id, None)
        if done is not None:
            done.set_result(None)
