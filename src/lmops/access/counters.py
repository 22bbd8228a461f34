"""Limit counters: in memory for one replica, in Redis when several replicas share limits.

Both backends give the same answers. ``admit`` tests every check of a request and, only
if all pass, applies them — atomically (a single event-loop step in memory, one Lua script
in Redis, so one round trip). ``apply`` adds deltas after the request (releases, real usage)
without blocking the caller.

A key's checks and deltas are the same for every request in one second; only the amounts
differ. So they are built once and name their amount by its index (``slot``) in the amounts
the caller passes with them.

Check kinds:
- ``add``: refuse when ``value + amount > limit``, else add ``amount`` (requests in a window,
  parallel requests, a budget's spent-plus-reserved total)
- ``below``: refuse when ``value >= limit``; nothing is added (tokens in a window, booked after the request)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, TypeVar
from urllib.parse import urlparse

from lmops.access.resp import NoScript, PipelinedScript

log = logging.getLogger("lmops.access")
S = TypeVar("S")
P = TypeVar("P")


def pipelined_script(url: str) -> PipelinedScript | None:
    """The pipelined connection for a plain ``redis://host:port/db`` URL (TLS and sockets: redis-py only)."""
    from redis.asyncio.connection import parse_url

    if urlparse(url).scheme != "redis":
        return None
    options = parse_url(url)
    if set(options) - {"host", "port", "db", "username", "password"}:
        return None
    return PipelinedScript(options.get("host", "localhost"), int(options.get("port", 6379)),
                           db=int(options.get("db", 0)), username=options.get("username"),
                           password=options.get("password"))


# Named tuples, not dataclasses: the counters unpack them in tight loops.
class Check(NamedTuple):
    kind: str  # add | below
    key: str
    limit: float
    slot: int = 0  # index of its amount in the amounts admitted with it
    ttl: int = 0  # seconds the written key lives; 0 = forever


class Delta(NamedTuple):
    key: str
    slot: int  # index of its amount in the amounts applied with it
    ttl: int = 0


class Admission:
    """The answer to one admission."""

    __slots__ = ("failed", "ok", "values")

    def __init__(self, ok: bool, values: tuple[float, ...], failed: int = -1):
        self.ok = ok
        self.values = values  # per check: the usage counted against its limit
        self.failed = failed  # index of the first check that refused


Amounts = Sequence[float]


class Counters(Protocol):
    async def admit(self, checks: Sequence[Check], amounts: Amounts) -> Admission: ...

    def apply(self, deltas: Sequence[Delta], amounts: Amounts) -> None: ...

    async def seed(self, key: str, value: float, ttl: int) -> None:
        """Set ``key`` to ``value`` unless it exists (load what the ledger says was spent)."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def drain(self) -> None:
        """Wait until every ``apply`` so far has taken effect."""
        ...

    async def close(self) -> None: ...


Cell = list[float]  # [value, expires at]: one counter of the memory backend, updated in place
PreparedCheck = tuple[Cell, bool, float, int, int]  # cell, adds, limit, slot, ttl
PreparedDelta = tuple[Cell, int, int]  # cell, slot, ttl


class MemoryCounters:
    """Counters of one process: ``key -> [value, expires at]`` (a cell, updated in place).

    A request's checks and deltas come from its key's per-second template, so the same sequence object
    arrives again and again: its cells are resolved once (``_prepare_*``) and later calls read and write
    them without a dict lookup or a new tuple per counter. With every limit set on a team and its key a
    request makes ten checks and eight updates, and this is the gateway's hot path, so the loops are
    written out by hand.
    """

    _PREPARED_MAX = 4096  # sequences whose cells are remembered (a few per key and second)

    def __init__(self, clock: Any = time.time):
        self._clock = clock
        self._values: dict[str, Cell] = {}
        # id(sequence) -> (the sequence, its cells): the sequence is kept, so its id is not reused meanwhile
        self._checks: dict[int, tuple[Sequence[Check], tuple[PreparedCheck, ...]]] = {}
        self._deltas: dict[int, tuple[Sequence[Delta], tuple[PreparedDelta, ...]]] = {}
        self._next_purge = 0.0

    async def admit(self, checks: Sequence[Check], amounts: Amounts) -> Admission:
        return self.admit_now(checks, amounts)

    def admit_now(self, checks: Sequence[Check], amounts: Amounts) -> Admission:
        """``admit`` without awaiting: the memory backend answers at once."""
        now = self._clock()
        if now >= self._next_purge:
            self._purge(now)
        hit = self._checks.get(id(checks))
        cells = hit[1] if hit is not None and hit[0] is checks else self._prepare_checks(checks)
        values: list[float] = []
        failed = -1
        for i, (cell, add, limit, slot, _) in enumerate(cells):
            used = cell[0] if cell[1] > now else 0.0
            if add:
                used += amounts[slot]
                if used > limit and failed < 0:
                    failed = i
            elif used >= limit and failed < 0:
                failed = i
            values.append(used)
        if failed >= 0:
            return Admission(False, tuple(values), failed)
        for (cell, add, _, _, ttl), used in zip(cells, values, strict=True):
            if add:  # used = value + amount
                cell[0] = used
                cell[1] = now + ttl if ttl else math.inf
        return Admission(True, tuple(values))

    def apply(self, deltas: Sequence[Delta], amounts: Amounts) -> None:
        now = self._clock()
        hit = self._deltas.get(id(deltas))
        cells = hit[1] if hit is not None and hit[0] is deltas else self._prepare_deltas(deltas)
        for cell, slot, ttl in cells:
            cell[0] = (cell[0] if cell[1] > now else 0.0) + amounts[slot]
            cell[1] = now + ttl if ttl else math.inf

    def _prepare_checks(self, checks: Sequence[Check]) -> tuple[PreparedCheck, ...]:
        cells = tuple([(self._cell(c.key), c.kind == "add", float(c.limit), c.slot, c.ttl) for c in checks])
        _remember(self._checks, checks, cells, self._PREPARED_MAX)
        return cells

    def _prepare_deltas(self, deltas: Sequence[Delta]) -> tuple[PreparedDelta, ...]:
        cells = tuple([(self._cell(d.key), d.slot, d.ttl) for d in deltas])
        _remember(self._deltas, deltas, cells, self._PREPARED_MAX)
        return cells

    def _cell(self, key: str) -> Cell:
        cell = self._values.get(key)
        if cell is None:
            cell = self._values[key] = [0.0, -math.inf]  # expired: reads as zero
        return cell

    async def seed(self, key: str, value: float, ttl: int) -> None:
        now = self._clock()
        cell = self._cell(key)
        if not cell[1] > now:
            cell[0], cell[1] = value, now + ttl if ttl else math.inf

    async def exists(self, key: str) -> bool:
        cell = self._values.get(key)
        return cell is not None and cell[1] > self._clock()

    def value(self, key: str) -> float:
        """A counter's current value (0 when it does not exist or has expired)."""
        cell = self._values.get(key)
        return cell[0] if cell is not None and cell[1] > self._clock() else 0.0

    def keys(self) -> list[str]:
        """The keys of the counters that have not expired."""
        now = self._clock()
        return [key for key, cell in self._values.items() if cell[1] > now]

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        self._values.clear()
        self._checks.clear()
        self._deltas.clear()

    def _purge(self, now: float) -> None:
        """Drop expired cells, and forget every prepared sequence (they may point at dropped cells)."""
        self._values = {k: cell for k, cell in self._values.items() if cell[1] > now}
        self._checks.clear()
        self._deltas.clear()
        self._next_purge = now + 30.0


def _remember(store: dict[int, tuple[S, tuple[P, ...]]], sequence: S, cells: tuple[P, ...], most: int) -> None:
    """Keep a sequence's prepared cells under its id, with the sequence itself (so that id is not reused)."""
    if len(store) >= most:
        store.clear()
    store[id(sequence)] = (sequence, cells)


# KEYS: one per check. ARGV[1]: per check "kind limit amount ttl", space-separated.
# Returns "failed value1 value2 ..." (failed = -1 when admitted).
_ADMIT = """
local spec = {}
for word in string.gmatch(ARGV[1], '%S+') do spec[#spec + 1] = word end
local n = #spec / 4
local values = {}
local failed = -1
for i = 1, n do
  local kind, limit, amount = spec[4*i-3], tonumber(spec[4*i-2]), tonumber(spec[4*i-1])
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  local ok
  if kind == 'add' then
    value = value + amount
    ok = value <= limit
  else
    ok = value < limit
  end
  values[i] = tostring(value)
  if not ok and failed < 0 then failed = i - 1 end
end
if failed < 0 then
  for i = 1, n do
    if spec[4*i-3] == 'add' then
      redis.call('INCRBYFLOAT', KEYS[i], spec[4*i-1])
      local ttl = tonumber(spec[4*i])
      if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
    end
  end
end
return tostring(failed) .. ' ' .. table.concat(values, ' ')
"""
# KEYS: keys. ARGV: per key amount, ttl.
_APPLY = """
for i = 1, #KEYS do
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[2*i-1])
  local ttl = tonumber(ARGV[2*i])
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return #KEYS
"""

_SEED = "if redis.call('SET', KEYS[1], ARGV[1], 'NX') and tonumber(ARGV[2]) > 0 then " \
        "redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 1"


class RedisCounters:
    """Counters shared by every replica through one Redis.

    An admission is one script call (one round trip). Updates after requests are merged per key
    and sent by a single background flusher, one script call per batch: a burst of finishing
    requests costs a few round trips, and never more connections than the pool allows.
    """

    def __init__(self, url: str, *, max_connections: int = 32):
        import redis.asyncio as redis

        pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5,
                                                     decode_responses=True)
        self._redis = redis.Redis(connection_pool=pool)
        self._admit = self._redis.register_script(_ADMIT)
        self._apply = self._redis.register_script(_APPLY)
        self._seed = self._redis.register_script(_SEED)
        self._pending: dict[str, tuple[float, int]] = {}  # key -> (summed amount, ttl)
        self._fast = pipelined_script(url)  # admissions, on the request path; None: redis-py only
        self._flusher: asyncio.Task[None] | None = None

    async def admit(self, checks: Sequence[Check], amounts: Amounts) -> Admission:
        keys = [c.key for c in checks]
        spec = " ".join([f"{c.kind} {float(c.limit)!r} {float(amounts[c.slot])!r} {c.ttl}" for c in checks])
        reply = (await self._run_admit(keys, [spec])).split()
        failed = int(reply[0])
        return Admission(failed < 0, tuple(float(v) for v in reply[1:]), failed)

    async def _run_admit(self, keys: list[str], args: list[str]) -> str:
        if self._fast is not None:
            try:
                return (await self._fast.call(self._admit.sha, keys, args)).decode()
            except NoScript:
                pass  # redis-py loads the script and runs it; later calls find it loaded
        return await self._admit(keys=keys, args=args)

    def apply(self, deltas: Sequence[Delta], amounts: Amounts) -> None:
        pending = self._pending
        for key, slot, ttl in deltas:
            amount, longest = pending.get(key, (0.0, 0))
            pending[key] = (amount + amounts[slot], max(ttl, longest))
        if pending and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        failures = 0
        while self._pending:
            batch, self._pending = self._pending, {}
            args: list[Any] = []
            for amount, ttl in batch.values():
                args += [repr(amount), ttl]
            try:
                await self._apply(keys=list(batch), args=args)
                failures = 0
            except Exception:  # noqa: BLE001 - keep the updates and retry; serving goes on
                failures += 1
                log.exception("could not apply %d counter updates in Redis; retrying", len(batch))
                for key, (amount, ttl) in batch.items():
                    old, old_ttl = self._pending.get(key, (0.0, 0))
                    self._pending[key] = (old + amount, max(ttl, old_ttl))
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def seed(self, key: str, value: float, ttl: int) -> None:
        await self._seed(keys=[key], args=[repr(float(value)), ttl])

    async def exists(self, key: str) -> bool:
        return bool(await self._redis.exists(key))

    async def drain(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait_for(asyncio.shield(self._flusher), 10)

    async def close(self) -> None:
        try:
            await self.drain()
        except Exception:  # noqa: BLE001 - Redis gone: the updates expire with their keys
            log.exception("could not apply the last counter updates in Redis")
        if self._fast is not None:
            await self._fast.close()
        await self._redis.aclose()
