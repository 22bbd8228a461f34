"""Turn a key's limits into counter checks for one request, and what it holds until it settles."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


@dataclass
class Hold:
    """What an admitted request holds until it settles."""

    releases: list[Delta] = field(default_factory=list)  # parallel slots, reserved budget
    spend: list[tuple[str, str, int]] = field(default_factory=list)  # (spent key, "usd" | "tokens", ttl)
    token_windows: list[str] = field(default_factory=list)  # subjects whose tokens per minute are counted

    def settle(self, cost_usd: float, tokens: int, now: float) -> list[Delta]:
        """Release what was held and book the real usage."""
        deltas = list(self.releases)
        for key, unit, ttl in self.spend:
            deltas.append(Delta(key, cost_usd if unit == "usd" else float(tokens), ttl))
        if tokens:
            window = int(now // WINDOW)
            deltas += [Delta(f"{base}:{window}", float(tokens), _window_ttl(now)) for base in self.token_windows]
        return deltas


@dataclass
class Plan:
    checks: list[Check] = field(default_factory=list)
    meters: list[Meter] = field(default_factory=list)
    hold: Hold = field(default_factory=Hold)


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
    token_windows: tuple[str, ...]
    budgets: tuple[_Budget, ...]


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
        t = hit[1]
        plan = Plan(list(t.checks), list(t.meters), Hold(list(t.releases), [], list(t.token_windows)))
        for b in t.budgets:
            amount = max_cost_usd if b.unit == "usd" else float(max_tokens)
            plan.checks.append(Check("reserve", b.spent_key, b.limit, amount, b.ttl, b.held_key))
            plan.hold.releases.append(Delta(b.held_key, -amount, b.ttl))
            plan.hold.spend.append((b.spent_key, b.unit, b.ttl))
        return plan

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
        return _Template(tuple(checks), tuple(meters + budget_meters), tuple(releases), tuple(windows),
                         tuple(budgets))


def _window_ttl(now: float) -> int:
    return int(WINDOW - now % WINDOW) + 2


def ratelimit_headers(meters: list[Meter], values: tuple[float, ...]) -> dict[str, str]:
    """``x-ratelimit-*`` headers for requests and tokens per minute: the tightest of team and key."""
    tightest: dict[str, tuple[float, Meter]] = {}
    for meter, used in zip(meters, values):
        name = meter.name
        if name == "requests" or name == "tokens":
            remaining = meter.limit - used
            if name not in tightest or remaining < tightest[name][0]:
                tightest[name] = (remaining, meter)
    headers: dict[str, str] = {}
    for name, (remaining, meter) in tightest.items():
        headers[f"x-ratelimit-limit-{name}"] = str(int(meter.limit))
        headers[f"x-ratelimit-remaining-{name}"] = str(int(max(0.0, remaining)))
        headers[f"x-ratelimit-reset-{name}"] = f"{math.ceil(meter.reset)}s"
    return headers
