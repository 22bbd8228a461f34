"""Limits of a team or a key, and budget periods."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatchcase

SUBJECT_TYPES = ("team", "key")
ROLES = ("admin", "team_admin", "member")
SCOPES = ("inference", "batch", "admin")


MAX_RATE = 2**31 - 1  # requests or tokens per minute, parallel requests: what an INTEGER column holds
MAX_TOKENS_BUDGET = 2**63 - 1  # a BIGINT column


@dataclass(frozen=True)
class Limits:
    """What one team or key may do; None means unlimited."""

    models: tuple[str, ...] | None = None  # fnmatch patterns over "model" or "model:adapter"
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_tokens: int | None = None
    budget_usd: float | None = None
    budget_period: str = "month"

    def allows(self, model: str) -> bool:
        return self.models is None or any(fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def has_budget(self) -> bool:
        return self.budget_tokens is not None or self.budget_usd is not None


def period_start(period: str, now: datetime) -> datetime | None:
    """When the budget period containing ``now`` (UTC) began; None for "total"."""
    now = now.astimezone(timezone.utc)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return None


def period_end(period: str, now: datetime) -> datetime | None:
    start = period_start(period, now)
    if start is None:
        return None
    if period == "day":
        return start + timedelta(days=1)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def period_id(period: str, now: datetime) -> str:
    start = period_start(period, now)
    return "total" if start is None else start.strftime("%Y%m%d" if period == "day" else "%Y%m")
