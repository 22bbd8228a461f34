"""Turn a key's limits into counter checks for one request, and what it holds until it settles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from lmops.access.counters import Check, Delta
from lmops.access.rules import Limits, period_end, period_id
from lmops.access.store import KeyGrant

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


class Plan:
    """One request's checks, in the order of its template's meters; once admitted, what it holds until it
    settles: parallel slots, and its worst-case cost reserved against each budget."""

    __slots__ = ("checks", "template", "tokens", "usd")

    def __init__(self, template: _Template, usd: float, tokens: float):
        self.template = template
        self.usd = usd
        self.tokens = tokens
        checks = list(template.checks)
        for b in template.budgets:
            checks.append(Check("reserve", b.spent_key, b.limit, usd if b.unit == "usd" else tokens, b.ttl,
                                b.held_key))
        self.checks = checks

    def settle(self, cost_usd: float, tokens: int, now: float) -> list[Delta]:
        """Release what was held and book the real usage."""
        t = self.template
        deltas = list(t.releases)
        for b in t.budgets:
            if b.unit == "usd":
                deltas += (Delta(b.held_key, -self.usd, b.ttl), Delta(b.spent_key, cost_usd, b.ttl))
            else:
                deltas += (Delta(b.held_key, -self.tokens, b.ttl), Delta(b.spent_key, float(tokens), b.ttl))
        if tokens and t.token_windows:
            window, ttl = int(now // WINDOW), _window_ttl(now)
            keys = t.window_keys if window == t.window else [f"{base}:{window}" for base in t.token_windows]
            deltas += [Delta(key, float(tokens), ttl) for key in keys]
        return deltas

    @property
    def meters(self) -> tuple[Meter, ...]:
        return self.template.meters

    def headers(self, values: Sequence[float]) -> dict[str, str]:
        """``x-ratelimit-*`` headers for requests and tokens per minute: the tightest of team and key."""
        headers: dict[str, str] = {}
        for names, slots, reset in self.template.rate_headers:
            best = math.inf
            limit_text = ""
            for i, limit, text in slots:
                remaining = limit - values[i]
                if remaining < best:
                    best, limit_text = remaining, text
            headers[names[0]] = limit_text
            headers[names[1]] = str(int(best)) if best > 0 else "0"
            headers[names[2]] = reset
        return headers


def budget_keys(namespace: str, subject_type: str, subject_id: str, limits: Limits,
                now: datetime) -> list[tuple[str, str]]:
    """(spent key, unit) of each budget the limits set, in the current period."""
    pid = period_id(limits.budget_period, now)
    keys = []
    if limits.budget_usd is not None:
        keys.append((f"{namespace}:{_UNIT_TAG['usd']}:{subject_type}:{subject_id}:{pid}", "usd"))
    if limits.budget_tokens is not None:
        keys.append((f"{namespace}:{_UNIT_TAG['tokens']}:{subject_type}:{subject_id}:{pid}", "tokens"))
    return keys


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
class _Budget:
    spent_key: str
    held_key: str
    unit: str  # usd | tokens
    limit: float
    ttl: int


@dataclass(frozen=True)
class _Template:
    """The part of a key's plan that is the same for every request in one second."""

    checks: tuple[Check, ...]
    meters: tuple[Meter, ...]
    releases: tuple[Delta, ...]
    token_windows: tuple[str, ...]  # subjects whose tokens per minute are counted
    window: int  # the minute the template was made in
    window_keys: tuple[str, ...]  # their counters in that minute
    budgets: tuple[_Budget, ...]
    # per header family: (limit, remaining, reset header names), ((check index, limit, limit text), ...), reset
    rate_headers: tuple[tuple[tuple[str, str, str], tuple[tuple[int, float, str], ...], str], ...]


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
        releases: list[Delta] = []
        windows: list[str] = []
        budgets: list[_Budget] = []
        budget_meters: list[Meter] = []
        reset = WINDOW - now % WINDOW
        for subject_type, subject_id, limits in (("team", grant.team_id, grant.team_limits),
                                                 ("key", grant.key_id, grant.key_limits)):
            if limits is None:
                continue
            if limits.rpm is not None:
                key = f"{ns}:rpm:{subject_type}:{subject_id}:{moment.window}"
                checks.append(Check("add", key, limits.rpm, 1.0, moment.window_ttl))
                meters.append(Meter("requests", subject_type, limits.rpm, reset))
            if limits.tpm is not None:
                base = f"{ns}:tpm:{subject_type}:{subject_id}"
                checks.append(Check("below", f"{base}:{moment.window}", limits.tpm))
                meters.append(Meter("tokens", subject_type, limits.tpm, reset))
                windows.append(base)
            if limits.max_parallel is not None:
                key = f"{ns}:par:{subject_type}:{subject_id}"
                checks.append(Check("add", key, limits.max_parallel, 1.0, PARALLEL_TTL))
                meters.append(Meter("parallel", subject_type, limits.max_parallel, 1.0))
                releases.append(Delta(key, -1.0, PARALLEL_TTL))
            if limits.has_budget:
                pid, ttl, until = moment.periods[limits.budget_period]
                for unit, limit in (("usd", limits.budget_usd), ("tokens", limits.budget_tokens)):
                    if limit is not None:
                        spent = f"{ns}:{_UNIT_TAG[unit]}:{subject_type}:{subject_id}:{pid}"
                        budgets.append(_Budget(spent, spent + ":held", unit, limit, ttl))
                        budget_meters.append(Meter(f"budget_{unit}", subject_type, limit, until,
                                                   limits.budget_period))
        rate_headers = []
        for name in ("requests", "tokens"):
            slots = tuple((i, m.limit, str(int(m.limit))) for i, m in enumerate(meters) if m.name == name)
            if slots:
                names = tuple(f"x-ratelimit-{part}-{name}" for part in ("limit", "remaining", "reset"))
                rate_headers.append((names, slots, f"{math.ceil(reset)}s"))
        return _Template(tuple(checks), tuple(meters + budget_meters), tuple(releases), tuple(windows),
                         moment.window, tuple(f"{base}:{moment.window}" for base in windows), tuple(budgets),
                         tuple(rate_headers))


def _window_ttl(now: float) -> int:
    return int(WINDOW - now % WINDOW) + 2
