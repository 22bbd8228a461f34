"""Bodies of the admin API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from lmops.access.rules import MAX_RATE, MAX_TOKENS_BUDGET, Limits


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeamCreate(_Body):
    name: str = Field(min_length=1, max_length=200)


class UserCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    team: str = Field(description="team id or name")
    role: str = "member"


class KeyCreate(_Body):
    team: str = Field(description="team id or name")
    user: str | None = Field(None, description="user id or name")
    name: str | None = Field(None, max_length=200)
    scopes: list[str] = Field(default_factory=lambda: ["inference", "batch"])
    expires_at: datetime | None = None


class LimitsBody(_Body):
    models: list[str] | None = Field(None, description="allowed models (fnmatch patterns); null = all")
    rpm: int | None = Field(None, ge=0, le=MAX_RATE)
    tpm: int | None = Field(None, ge=0, le=MAX_RATE)
    max_parallel: int | None = Field(None, ge=0, le=MAX_RATE)
    budget_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS_BUDGET)
    budget_usd: float | None = Field(None, ge=0)
    budget_period: str = Field("month", pattern="^(day|month|total)$")

    def limits(self) -> Limits:
        return Limits(models=tuple(self.models) if self.models is not None else None, rpm=self.rpm, tpm=self.tpm,
                      max_parallel=self.max_parallel, budget_tokens=self.budget_tokens, budget_usd=self.budget_usd,
                      budget_period=self.budget_period)
