"""The request_records table: one row per API request, written in batches."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from lmops.store.base import Base


class RequestRecord(Base):
    __tablename__ = "request_records"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # ours: unique even if callers reuse ids
    request_id: Mapped[str] = mapped_column(String(128))  # the x-request-id (the caller's, if it sent one)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))
    replica: Mapped[str | None] = mapped_column(String(500))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_request_records_created_at", "created_at"),
        Index("ix_request_records_model_created_at", "model", "created_at"),
        Index("ix_request_records_request_id", "request_id"),
    )
