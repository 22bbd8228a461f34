"""The batch tables: files, jobs (OpenAI batches and enrichment jobs), the item queue, step results.

Times are epoch seconds: integers where OpenAI shows them, floats for the queue's leases.
An item is claimable when its status is ``pending`` or ``leased`` and ``available_at`` has
passed: for a leased item ``available_at`` is the lease's expiry, so one partial index
serves new, retried and reclaimed items alike.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (BigInteger, Float, ForeignKey, Index, Integer, PrimaryKeyConstraint, String, Table, Text,
                        UniqueConstraint, text)
from sqlalchemy.orm import Mapped, mapped_column

from lmops.store.base import Base

ItemId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only
CLAIMABLE = text("status IN ('pending', 'leased')")


class FileRow(Base):
    __tablename__ = "batch_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(500))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(500))

    __table_args__ = (Index("ix_batch_files_team_id_created_at", "team_id", "created_at"),)


class JobRow(Base):
    __tablename__ = "batch_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # batch | enrichment
    workflow: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str | None] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16), default="24h")
    meta: Mapped[str | None] = mapped_column(Text)  # JSON
    params: Mapped[str | None] = mapped_column(Text)  # JSON
    errors: Mapped[str | None] = mapped_column(Text)  # JSON list of {code, message, param, line}
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int | None] = mapped_column(Integer)
    in_progress_at: Mapped[int | None] = mapped_column(Integer)
    finalizing_at: Mapped[int | None] = mapped_column(Integer)
    completed_at: Mapped[int | None] = mapped_column(Integer)
    failed_at: Mapped[int | None] = mapped_column(Integer)
    expired_at: Mapped[int | None] = mapped_column(Integer)
    cancelling_at: Mapped[int | None] = mapped_column(Integer)
    cancelled_at: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    workflow_hash: Mapped[str | None] = mapped_column(String(64))  # the workflow's definition when submitted
    owner: Mapped[str | None] = mapped_column(String(64))  # lease on intake / finalizing work
    owner_until: Mapped[float | None] = mapped_column(Float)
    intake: Mapped[str | None] = mapped_column(Text)  # JSON: how far intake got (``intake.Progress``)

    __table_args__ = (
        Index("ix_batch_jobs_team_id_kind_created_at", "team_id", "kind", "created_at"),
        Index("ix_batch_jobs_status", "status"),
    )


class ItemRow(Base):
    __tablename__ = "batch_items"

    id: Mapped[int] = mapped_column(ItemId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("batch_jobs.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(String(64))
    workflow: Mapped[str] = mapped_column(String(200))
    seq: Mapped[int] = mapped_column(Integer)  # line number in the input (1-based)
    custom_id: Mapped[str | None] = mapped_column(String(500))
    payload: Mapped[str] = mapped_column(Text)  # JSON
    status: Mapped[str] = mapped_column(String(12))  # staged pending leased done failed dead cancelled expired
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # tries started (claims not given back)
    lease_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # tries whose worker died
    available_at: Mapped[float] = mapped_column(Float)
    lease_token: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)  # JSON {code, message}
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        Index("ix_batch_items_claimable", "available_at", postgresql_where=CLAIMABLE, sqlite_where=CLAIMABLE),
    )


class ResultRow(Base):
    """One step's result for one item, with its lineage; at most one per (item, step)."""

    __tablename__ = "batch_results"

    item_id: Mapped[int] = mapped_column(ItemId)
    step: Mapped[str] = mapped_column(String(100))
    job_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(12))  # ok | error | flagged | dropped | skipped
    output: Mapped[str | None] = mapped_column(Text)  # JSON
    inputs: Mapped[str | None] = mapped_column(Text)  # JSON
    prompt: Mapped[str | None] = mapped_column(Text)
    prompt_version: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))
    adapter: Mapped[str | None] = mapped_column(String(200))
    params: Mapped[str | None] = mapped_column(Text)  # JSON
    seed: Mapped[int | None] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    request: Mapped[str | None] = mapped_column(Text)  # JSON: the model call as sent, what replay sends again
    step_hash: Mapped[str | None] = mapped_column(String(64))  # the step's definition it ran with
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        PrimaryKeyConstraint("item_id", "step"),
        Index("ix_batch_results_job_id_item_id", "job_id", "item_id"),
    )


# The tables as SQLAlchemy Core sees them, which the batch modules write their statements against (an ORM class's
# ``__table__`` is typed as any FromClause, which insert/update/delete do not take).
FILES = cast(Table, FileRow.__table__)
JOBS = cast(Table, JobRow.__table__)
ITEMS = cast(Table, ItemRow.__table__)
RESULTS = cast(Table, ResultRow.__table__)
