"""/v1/files wire objects (OpenAI)."""

from __future__ import annotations

from typing import Any


def file_object(row: Any) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": "processed", "status_details": None,
            "expires_at": None}


def file_list(rows: list[Any], has_more: bool) -> dict[str, Any]:
    data = [file_object(r) for r in rows]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
