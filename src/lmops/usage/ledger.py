"""The usage ledger: one row per authenticated request, with its principal, tokens and cost."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, Date, DateTime, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from lmops.store.base import Base

LedgerId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements only INTEGER keys


class LedgerEntry(Base):
    __tablename__ = "usage_ledger"

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    day: Mapped[date] = mapped_column(Date)  # UTC day of created_at: reports group by it without computing it
    team_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str | None] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str | None] = mapped_column(String(200))
    adapter: Mapped[str | None] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(64))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_usage_ledger_created_at", "created_at"),
        Index("ix_usage_ledger_team_id_created_at", "team_id", "created_at"),
        Index("ix_usage_ledger_key_id_created_at", "key_id", "created_at"),
    )
