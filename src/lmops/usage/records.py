"""The request_records table: one row per API request, written in batches; it is also the usage ledger.

Every request leaves a row (id, time, model, replica, tokens, latency, time to first token, status,
error). A request that access control admitted for a principal is billed in the same row: its team,
user and key, its cost in dollars and its UTC day. The ledger is the rows with a ``team_id``: one
write per request rather than a record and a ledger row written apart, which halves the database
work that billing adds to every request.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import cast

from sqlalchemy import Boolean, Date, DateTime, Float, Index, Integer, String, Table, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from lmops.store.base import Base

BILLED = text("team_id IS NOT NULL")
KEYED = text("key_id IS NOT NULL")


class RequestRecord(Base):
    __tablename__ = "request_records"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # ours: unique even if callers reuse ids
    request_id: Mapped[str] = mapped_column(String(128))  # the x-request-id (the caller's, if it sent one)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))  # the deployment (or the name asked for, if unknown)
    adapter: Mapped[str | None] = mapped_column(String(200))  # the LoRA adapter of "model:adapter"
    replica: Mapped[str | None] = mapped_column(String(500))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Billing (the ledger): set when the request was admitted for a principal, else NULL.
    team_id: Mapped[str | None] = mapped_column(String(40))
    user_id: Mapped[str | None] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))
    cost_usd: Mapped[float | None] = mapped_column(Float)
    day: Mapped[date | None] = mapped_column(Date)  # UTC day of created_at: reports group by it without computing it

    __table_args__ = (
        Index("ix_request_records_created_at", "created_at"),
        Index("ix_request_records_model_created_at", "model", "created_at"),
        Index("ix_request_records_request_id", "request_id"),
        # Partial: a request that is not billed costs no entry in them.
        Index("ix_request_records_team_id_created_at", "team_id", "created_at", sqlite_where=BILLED,
              postgresql_where=BILLED),
        Index("ix_request_records_key_id_created_at", "key_id", "created_at", sqlite_where=KEYED,
              postgresql_where=KEYED),
    )


RECORDS = cast(Table, RequestRecord.__table__)  # for Core statements (an ORM class's table is typed as FromClause)
