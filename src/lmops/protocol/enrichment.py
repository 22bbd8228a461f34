"""Enrichment jobs: the request to create one and the job object with its progress."""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from lmops.protocol.batches import usage


class JobCreate(BaseModel):
    """JSON form of ``POST /v1/enrichment/jobs`` (uploads use multipart with the same fields)."""

    model_config = ConfigDict(extra="forbid")
    workflow: str = Field(min_length=1)
    records: list[dict[str, Any]] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    id_field: str | None = None
    metadata: dict[str, str] | None = None


class JobOptions(BaseModel):
    """Form fields of a multipart job upload (``params`` and ``metadata`` as JSON strings)."""

    model_config = ConfigDict(extra="forbid")
    workflow: str = Field(min_length=1)
    format: Literal["jsonl", "csv"] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    id_field: str | None = None
    metadata: dict[str, str] | None = None


def job_object(row: Any) -> dict[str, Any]:
    done, failed, total = row.completed, row.failed, row.total
    pending = max(0, total - done - failed) if row.status not in ("validating",) else None
    end = row.completed_at or row.cancelled_at or row.expired_at or row.failed_at or time.time()
    elapsed = (end - row.in_progress_at) if row.in_progress_at else 0
    rate = (done + failed) / elapsed if elapsed > 0 else None
    eta = round(pending / rate, 1) if rate and pending else (0.0 if pending == 0 else None)
    return {
        "id": row.id, "object": "enrichment.job", "workflow": row.workflow, "status": row.status,
        "input_file_id": row.input_file_id, "created_at": row.created_at, "in_progress_at": row.in_progress_at,
        "completed_at": row.completed_at, "cancelled_at": row.cancelled_at, "failed_at": row.failed_at,
        "progress": {"total": total, "done": done, "failed": failed, "flagged": row.flagged, "pending": pending,
                     "rate": round(rate, 2) if rate else None, "eta_seconds": eta},
        "errors": orjson.loads(row.errors) if row.errors else None,
        "params": orjson.loads(row.params) if row.params else {},
        "metadata": orjson.loads(row.meta) if row.meta else None,
        "usage": usage(row),
    }


def job_list(rows: list[Any], has_more: bool) -> dict[str, Any]:
    data = [job_object(r) for r in rows]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
