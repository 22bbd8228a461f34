"""Turn a key's limits into counter checks for one request, and what it holds until it settles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from lmops.access.counters import Check, Delta
from lmops.access.rules import Limits, period_end, period_id
from lmops.access.store import KeyGrant
from lmops.serving.context import RawHeaders

WINDOW = 60  # seconds: limits are per minute
PARALLEL_TTL = 3600  # a slot leaked by a crashed replica frees itself after this long
DAY = 86400
_UNIT_TAG = {"usd": "usd", "tokens": "tok"}


@dataclass(frozen=True)
class Meter:
    """What a check measures, for headers and refusal messages."""

    name: str  # requests | tokens | parallel | budget_usd | budget_tokens
    subject: str  # team | key
    limit: float
    reset: float  # seconds until it resets
    period: str = ""


# Amount slots. At admission: a request counts one, and reserves its worst-case cost in dollars and tokens.
COUNT, USD, TOKENS = 0, 1, 2
# At settlement: a parallel slot is released, the reservations are replaced by the real cost (so each
# budget's counter holds what was spent plus what running requests reserved), tokens are booked.
RELEASE, USD_CORRECTION, TOKENS_CORRECTION, TOKENS_USED = 0, 1, 2, 3


class Plan:
    """One request's checks (its key's template) and the amounts it reserved until it settles."""

    __slots__ = ("amounts", "checks", "template")

    def __init__(self, template: _Template, usd: float, tokens: float):
        self.template = template
        self.checks: tuple[Check, ...] = template.checks
        self.amounts = (1.0, usd, tokens)

    def settle(self, cost_usd: float, tokens: int, now: float) -> tuple[tuple[Delta, ...], tuple[float, ...]]:
        """The deltas (and their amounts) that release what was held and book the real usage."""
        t = self.template
        deltas = t.settlement if int(now // WINDOW) == t.window else t.settlement_at(now)
        _, usd, reserved_tokens = self.amounts
        return deltas, (-1.0, cost_usd - usd, tokens - reserved_tokens, float(tokens))

    @property
    def meters(self) -> tuple[Meter, ...]:
        return self.template.meters

    def headers(self, values: Sequence[float]) -> RawHeaders:
        """``x-ratelimit-*`` headers for requests and tokens per minute, the tightest of team and key; encoded
        once here (names, limits and resets come encoded from the template) rather than by each layer."""
        headers: RawHeaders = []
        for remaining_name, slots, reset in self.template.rate_headers:
            best = math.inf
            limit_header = slots[0][2]
            for i, limit, header in slots:
                remaining = limit - values[i]
                if remaining < best:
                    best, limit_header = remaining, header
            headers += (limit_header, (remaining_name, str(int(best)).encode() if best > 0 else b"0"), reset)
        return headers


def budget_keys(namespace: str, subject_type: str, subject_id: str, limits: Limits,
                now: datetime) -> list[tuple[str, str]]:
    """(spent key, unit) of each budget the limits set, in the current period."""
    pid = period_id(limits.budget_period, now)
    return [(_budget_key(namespace, unit, subject_type, subject_id, pid), unit)
            for unit, limit in (("usd", limits.budget_usd), ("tokens", limits.budget_tokens)) if limit is not None]


def _budget_key(namespace: str, unit: str, subject_type: str, subject_id: str, period: str) -> str:
    """The counter of one budget in one period: what was spent plus what running requests reserved."""
    return f"{namespace}:{_UNIT_TAG[unit]}:{subject_type}:{subject_id}:{period}"


def budget_ttl(period: str, now: datetime) -> int:
    end = period_end(period, now)
    return 0 if end is None else int((end - now).total_seconds()) + DAY


@dataclass(frozen=True)
class Moment:
    """Window and budget-period facts for one second: computed once a second, not per request."""

    second: int
    window: int
    window_ttl: int
    periods: dict[str, tuple[str, int, float]]  # period -> (id, key ttl, seconds until it ends)

    @classmethod
    def at(cls, now: float) -> "Moment":
        wall = datetime.fromtimestamp(now, timezone.utc)
        periods = {}
        for period in ("day", "month", "total"):
            end = period_end(period, wall)
            periods[period] = (period_id(period, wall), budget_ttl(period, wall),
                               (end - wall).total_seconds() if end else float(DAY))
        return cls(int(now), int(now // WINDOW), _window_ttl(now), periods)


@dataclass(frozen=True)
class _Template:
    """The part of a key's plan that is the same for every request in one second."""

    checks: tuple[Check, ...]
    meters: tuple[Meter, ...]  # one per check
    settlement: tuple[Delta, ...]  # releases, budget corrections, then tokens per minute in ``window``
    fixed: tuple[Delta, ...]  # the releases and budget corrections alone
    token_windows: tuple[str, ...]  # subjects whose tokens per minute are counted
    window: int  # the minute the template was made in
    # per header family: the remaining header's name, ((check index, limit, limit header), ...), reset header
    rate_headers: tuple[tuple[bytes, tuple[tuple[int, float, tuple[bytes, bytes]], ...], tuple[bytes, bytes]], ...]

    def settlement_at(self, now: float) -> tuple[Delta, ...]:
        """The settlement of a request that ends in a later minute than it began."""
        window, ttl = int(now // WINDOW), _window_ttl(now)
        return self.fixed + tuple(Delta(f"{base}:{window}", TOKENS_USED, ttl) for base in self.token_windows)


class Planner:
    """Plans requests; what depends only on the key and the clock is built once per key and second."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._moment = Moment.at(0.0)
        self._templates: dict[str, tuple[KeyGrant, _Template]] = {}

    def plan(self, grant: KeyGrant, max_cost_usd: float, max_tokens: int, now: float) -> Plan:
        if int(now) != self._moment.second:
            self._moment = Moment.at(now)
            self._templates.clear()
        hit = self._templates.get(grant.key_id)
        if hit is None or hit[0] is not grant:
            hit = (grant, self._template(grant, now))
            self._templates[grant.key_id] = hit
        return Plan(hit[1], max_cost_usd, float(max_tokens))

    def _template(self, grant: KeyGrant, now: float) -> _Template:
        moment, ns = self._moment, self.namespace
        checks: list[Check] = []
        meters: list[Meter] = []
        fixed: list[Delta] = []
        windows: list[str] = []
        reset = WINDOW - now % WINDOW
        for subject_type, subject_id, limits in (("team", grant.team_id, grant.team_limits),
                                                 ("key", grant.key_id, grant.key_limits)):
            if limits is None:
                continue
            if limits.rpm is not None:
                key = f"{ns}:rpm:{subject_type}:{subject_id}:{moment.window}"
                checks.append(Check("add", key, limits.rpm, COUNT, moment.window_ttl))
                meters.append(Meter("requests", subject_type, limits.rpm, reset))
            if limits.tpm is not None:
                base = f"{ns}:tpm:{subject_type}:{subject_id}"
                checks.append(Check("below", f"{base}:{moment.window}", limits.tpm))
                meters.append(Meter("tokens", subject_type, limits.tpm, reset))
                windows.append(base)
            if limits.max_parallel is not None:
                key = f"{ns}:par:{subject_type}:{subject_id}"
                checks.append(Check("add", key, limits.max_parallel, COUNT, PARALLEL_TTL))
                meters.append(Meter("parallel", subject_type, limits.max_parallel, 1.0))
                fixed.append(Delta(key, RELEASE, PARALLEL_TTL))
            if limits.has_budget:
                pid, ttl, until = moment.periods[limits.budget_period]
                for unit, limit, slot, correction in (("usd", limits.budget_usd, USD, USD_CORRECTION),
                                                      ("tokens", limits.budget_tokens, TOKENS, TOKENS_CORRECTION)):
                    if limit is not None:
                        key = _budget_key(ns, unit, subject_type, subject_id, pid)
                        checks.append(Check("add", key, limit, slot, ttl))
                        meters.append(Meter(f"budget_{unit}", subject_type, limit, until, limits.budget_period))
                        fixed.append(Delta(key, correction, ttl))
        rate_headers = []
        for name in ("requests", "tokens"):
            limit_name, remaining_name, reset_name = (f"x-ratelimit-{part}-{name}".encode()
                                                      for part in ("limit", "remaining", "reset"))
            slots = tuple((i, m.limit, (limit_name, b"%d" % m.limit)) for i, m in enumerate(meters) if m.name == name)
            if slots:
                rate_headers.append((remaining_name, slots, (reset_name, b"%ds" % math.ceil(reset))))
        settlement = tuple(fixed) + tuple(Delta(f"{base}:{moment.window}", TOKENS_USED, moment.window_ttl)
                                          for base in windows)
        return _Template(tuple(checks), tuple(meters), settlement, tuple(fixed), tuple(windows), moment.window,
                         tuple(rate_headers))


def _window_ttl(now: float) -> int:
    return int(WINDOW - now % WINDOW) + 2
