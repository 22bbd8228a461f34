"""A bench run: every level of the load shape, for every target, interleaved.

Within a level each target is loaded in ``rounds`` slices, in ABBA order (A B, then B A, ...), so that a machine
that slows down or speeds up during the level weighs on every target alike. Each target at a level gets the
same prompts in the same order (and, at a request rate, the same arrival schedule). A level stops at
``requests`` requests or ``duration`` seconds per target, whichever comes first. ``stop`` (Ctrl-C) ends the run
at once: requests in flight are dropped, every finished one has already gone to ``sink``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from lmops.bench.client import Record, request_body, stream_chat
from lmops.bench.loads import arrival_times
from lmops.bench.options import Target
from lmops.bench.prompts import FOLLOW_UPS, SHARED_PREFIX, Prompt


@dataclass
class Plan:
    targets: list[Target]
    prompts: list[Prompt]
    levels: tuple[int, ...] = (1,)  # concurrency levels (when ``rates`` is empty)
    rates: tuple[float, ...] = ()  # request rates (requests/s): one level each
    requests: int | None = None  # per target and level; None: 4 × the concurrency (10 s at a rate), at least 32
    duration: float | None = None  # seconds per target and level
    rounds: int = 2
    turns: int = 1  # > 1: conversations of this many turns opening with a shared system prompt
    max_tokens: int = 256
    burstiness: float = 1.0
    seed: int = 0
    max_concurrency: int | None = None  # at a request rate: at most this many in flight (the rest queue)
    timeout: float = 300.0
    warmup: int = 1  # unrecorded requests per target first (a fresh connection's first stream is slower)
    api_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more body fields for every request (temperature)

    @property
    def mode(self) -> str:
        return "rate" if self.rates else "concurrency"

    def count(self, value: float) -> int:
        """How many requests each target is sent at the level of this concurrency or rate."""
        return self.requests or max(32, math.ceil(value * (10 if self.rates else 4)))

    def level_labels(self) -> list[tuple[str, float]]:
        if self.rates:
            return [(f"rate={r:g}", r) for r in self.rates]
        return [(f"c={c}", float(c)) for c in self.levels]


@dataclass
class Slice:
    """How long one target ran at one level (the sum of its rounds' wall times), and how much it finished."""

    target: str
    level: str
    value: float
    seconds: float = 0.0
    requests: int = 0
    cpu_seconds: float = 0.0  # this process's CPU time meanwhile: near ``seconds``, the client was the limit


class Runner:
    def __init__(self, plan: Plan, sink: Callable[[Record], None], on_round: Callable[[], None] | None = None):
        self.plan = plan
        self.sink = sink
        self.on_round = on_round or (lambda: None)
        self.stop = asyncio.Event()
        self.slices: dict[tuple[str, str], Slice] = {}
        self.models: dict[str, str] = {}

    async def run(self) -> list[Slice]:
        """Every level, every target; returns the time each target spent at each level."""
        p = self.plan
        headers = {"authorization": f"Bearer {p.api_key}"} if p.api_key else {}
        timeout = aiohttp.ClientTimeout(total=p.timeout)
        sessions = {t.name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                                  timeout=timeout, headers=headers) for t in p.targets}
        try:
            for t in p.targets:
                self.models[t.name] = t.model or await first_model(sessions[t.name], t)
            for t in p.targets:
                for _ in range(p.warmup):
                    prompt = p.prompts[0]
                    await stream_chat(sessions[t.name], t.url, request_body(
                        self.models[t.name], list(prompt.messages), min(prompt.max_tokens or p.max_tokens, 16),
                        {**p.extra, **prompt.extra}), Record(t.name, "warmup", 0, 0, 0, prompt.kind, 0.0),
                        time.perf_counter())
            t0 = time.perf_counter()
            for level, value in p.level_labels():
                for r in range(p.rounds):
                    for target in (p.targets if r % 2 == 0 else reversed(p.targets)):
                        if self.stop.is_set():
                            return list(self.slices.values())
                        await self._round(sessions[target.name], target, level, value, r, t0)
                        self.on_round()
        finally:
            await asyncio.gather(*(s.close() for s in sessions.values()))
        return list(self.slices.values())

    async def _round(self, session: aiohttp.ClientSession, target: Target, level: str, value: float, r: int,
                     t0: float) -> None:
        p = self.plan
        jobs_total = math.ceil(p.count(value) / p.turns)
        per_round = math.ceil(jobs_total / p.rounds)
        first, last = r * per_round, min(jobs_total, (r + 1) * per_round)
        if first >= last:
            return
        s = self.slices.setdefault((target.name, level), Slice(target.name, level, value))
        budget = None if p.duration is None else p.duration / p.rounds
        start, cpu = time.perf_counter(), time.process_time()
        deadline = None if budget is None else start + budget
        done = 0

        async def job(i: int, scheduled: float) -> None:
            nonlocal done
            done += await self._conversation(session, target, level, r, i, scheduled, t0)

        tasks: set[asyncio.Task[None]] = set()
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            if p.rates:
                await self._at_rate(job, first, last, value, r, deadline, t0, tasks, stopper)
            else:
                await self._at_concurrency(job, first, last, int(value), deadline, t0, tasks)
            pending: set[asyncio.Future[Any]] = set(tasks)
            while pending and not self.stop.is_set():  # every job finished, or Ctrl-C
                _, pending = await asyncio.wait([*pending, stopper], return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stopper)
        finally:
            stopper.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            s.seconds += time.perf_counter() - start
            s.cpu_seconds += time.process_time() - cpu
            s.requests += done

    async def _at_concurrency(self, job: Callable[[int, float], Any], first: int, last: int, c: int,
                              deadline: float | None, t0: float, tasks: set[asyncio.Task[None]]) -> None:
        cursor = first

        async def worker() -> None:
            nonlocal cursor
            while cursor < last and not self.stop.is_set():
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                i, cursor = cursor, cursor + 1
                await job(i, time.perf_counter() - t0)

        tasks.update(asyncio.ensure_future(worker()) for _ in range(min(c, last - first)))

    async def _at_rate(self, job: Callable[[int, float], Any], first: int, last: int, rate: float, r: int,
                       deadline: float | None, t0: float, tasks: set[asyncio.Task[None]],
                       stopper: asyncio.Future[Any]) -> None:
        p = self.plan
        times = arrival_times(last - first, rate, p.burstiness, seed=p.seed * 1000 + r)
        gate = asyncio.Semaphore(p.max_concurrency) if p.max_concurrency else None
        start = time.perf_counter()

        async def gated(i: int, scheduled: float) -> None:
            if gate is None:
                await job(i, scheduled)
                return
            async with gate:  # waiting here counts: the request's clock started at its arrival
                await job(i, scheduled)

        for i, at in zip(range(first, last), times, strict=False):
            due = start + at
            if deadline is not None and due >= deadline:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.wait([stopper], timeout=wait)
            if self.stop.is_set():
                break
            tasks.add(asyncio.ensure_future(gated(i, due - t0)))

    async def _conversation(self, session: aiohttp.ClientSession, target: Target, level: str, r: int, i: int,
                            scheduled: float, t0: float) -> int:
        """Job ``i``: one request, or ``turns`` turns of one conversation; returns how many succeeded."""
        p = self.plan
        prompt = p.prompts[i % len(p.prompts)]
        limit = prompt.max_tokens or p.max_tokens
        extra = {**p.extra, **prompt.extra}
        if p.turns == 1:
            rec = Record(target.name, level, r, i, 0, prompt.kind, scheduled)
            body = request_body(self.models[target.name], list(prompt.messages), limit, extra)
            await stream_chat(session, target.url, body, rec, t0)
            self.sink(rec)
            return rec.error is None
        messages: list[dict[str, Any]] = [{"role": "system", "content": SHARED_PREFIX}, *prompt.messages]
        ok = 0
        for turn in range(p.turns):
            rec = Record(target.name, level, r, i, turn, prompt.kind, scheduled)
            body = request_body(self.models[target.name], messages, limit, extra)
            answer = await stream_chat(session, target.url, body, rec, t0, keep_text=True)
            self.sink(rec)
            if rec.error is not None:
                break
            ok += 1
            messages += [{"role": "assistant", "content": answer},
                         {"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]}]
            scheduled = time.perf_counter() - t0  # the next turn is due as soon as this answer is read
        return ok


async def first_model(session: aiohttp.ClientSession, target: Target) -> str:
    """The first model a target lists (``GET /v1/models``); RuntimeError (a message for a person) if none."""
    try:
        async with session.get(target.models_url) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"target {target.name}: {target.models_url} answered {resp.status}; "
                                   "name the model with model=NAME")
        data = orjson.loads(body).get("data") or []
        return str(data[0]["id"])
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise RuntimeError(f"target {target.name}: cannot reach {target.models_url}: {exc or type(exc).__name__}")\
            from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise RuntimeError(f"target {target.name}: {target.models_url} lists no model; name it with model=NAME")\
            from None
