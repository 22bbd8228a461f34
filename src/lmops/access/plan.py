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
        keys.append((f"{namespace}:usd:{subject_type}:{subject_id}:{pid}", "usd"))
    if limits.budget_tokens is not None:
        keys.append((f"{namespace}:tok:{subject_type}:{subject_id}:{pid}", "tokens"))
    return keys


def budget_ttl(period: str, now: datetime) -> int:
    end = period_end(period, now)
    return 0 if end is None else int((end - now).total_seconds()) + DAY


def plan_request(namespace: str, grant: KeyGrant, max_cost_usd: float, max_tokens: int, now: float) -> Plan:
    plan = Plan()
    wall = datetime.fromtimestamp(now, timezone.utc)
    window = int(now // WINDOW)
    reset = WINDOW - now % WINDOW
    for subject_type, subject_id, limits in (("team", grant.team_id, grant.team_limits),
                                             ("key", grant.key_id, grant.key_limits)):
        if limits is None:
            continue
        base = f"{namespace}:%s:{subject_type}:{subject_id}"
        if limits.rpm is not None:
            plan.checks.append(Check("add", f"{base % 'rpm'}:{window}", limits.rpm, 1.0, _window_ttl(now)))
            plan.meters.append(Meter("requests", subject_type, limits.rpm, reset))
        if limits.tpm is not None:
            plan.checks.append(Check("below", f"{base % 'tpm'}:{window}", limits.tpm))
            plan.meters.append(Meter("tokens", subject_type, limits.tpm, reset))
            plan.hold.token_windows.append(base % "tpm")
        if limits.max_parallel is not None:
            key = base % "par"
            plan.checks.append(Check("add", key, limits.max_parallel, 1.0, PARALLEL_TTL))
            plan.meters.append(Meter("parallel", subject_type, limits.max_parallel, 1.0))
            plan.hold.releases.append(Delta(key, -1.0, PARALLEL_TTL))
        if limits.has_budget:
            ttl = budget_ttl(limits.budget_period, wall)
            end = period_end(limits.budget_period, wall)
            until = (end - wall).total_seconds() if end else float(DAY)
            for spent_key, unit in budget_keys(namespace, subject_type, subject_id, limits, wall):
                amount = max_cost_usd if unit == "usd" else float(max_tokens)
                limit = limits.budget_usd if unit == "usd" else limits.budget_tokens
                assert limit is not None
                held = spent_key + ":held"
                plan.checks.append(Check("reserve", spent_key, limit, amount, ttl, held))
                plan.meters.append(Meter(f"budget_{unit}", subject_type, limit, until, limits.budget_period))
                plan.hold.releases.append(Delta(held, -amount, ttl))
                plan.hold.spend.append((spent_key, unit, ttl))
    return plan


def _window_ttl(now: float) -> int:
    return int(WINDOW - now % WINDOW) + 2


def ratelimit_headers(meters: list[Meter], values: tuple[float, ...]) -> dict[str, str]:
    """``x-ratelimit-*`` headers for requests and tokens per minute: the tightest of team and key."""
    headers: dict[str, str] = {}
    for name in ("requests", "tokens"):
        tightest: tuple[float, Meter] | None = None
        for meter, used in zip(meters, values):
            if meter.name == name:
                remaining = max(0.0, meter.limit - used)
                if tightest is None or remaining < tightest[0]:
                    tightest = (remaining, meter)
        if tightest is not None:
            remaining, meter = tightest
            headers[f"x-ratelimit-limit-{name}"] = str(int(meter.limit))
            headers[f"x-ratelimit-remaining-{name}"] = str(int(remaining))
            headers[f"x-ratelimit-reset-{name}"] = f"{math.ceil(meter.reset)}s"
    return headers
