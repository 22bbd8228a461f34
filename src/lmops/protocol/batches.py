"""/v1/batches request schema and the batch object (OpenAI)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(min_length=1)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _small(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("at most 16 pairs, keys up to 64 and values up to 512 characters")
        return v


def batch_object(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "object": "batch", "endpoint": row.endpoint,
        "errors": orjson.loads(row.errors) if row.errors else None,
        "input_file_id": row.input_file_id, "completion_window": row.completion_window, "status": row.status,
        "output_file_id": row.output_file_id, "error_file_id": row.error_file_id,
        "created_at": row.created_at, "in_progress_at": row.in_progress_at, "expires_at": row.expires_at,
        "finalizing_at": row.finalizing_at, "completed_at": row.completed_at, "failed_at": row.failed_at,
        "expired_at": row.expired_at, "cancelling_at": row.cancelling_at, "cancelled_at": row.cancelled_at,
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": orjson.loads(row.meta) if row.meta else None,
        "usage": usage(row),
    }


def usage(row: Any) -> dict[str, Any]:
    return {"input_tokens": row.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": row.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": row.prompt_tokens + row.completion_tokens}


def batch_list(rows: list[Any], has_more: bool) -> dict[str, Any]:
    data = [batch_object(r) for r in rows]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
