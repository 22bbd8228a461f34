"""Helpers of the access tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from lmops.store.database import create_engine
from lmops.usage.records import RequestRecord

CHAT = [{"role": "user", "content": "hi"}]


def clear_of_minute_boundary(margin: float = 4.0) -> None:
    """Per-minute windows are fixed: start a rate-limit test well inside one."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)


def ledger_rows(database_url: str, wait_for: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The ledger's rows (billed request records), waiting until at least ``wait_for`` have been written (they
    are batched)."""

    async def read() -> list[dict[str, Any]]:
        db = create_engine(database_url)
        try:
            async with db.connect() as conn:
                billed = select(RequestRecord).where(RequestRecord.team_id.is_not(None))
                query = billed.order_by(RequestRecord.created_at, RequestRecord.id)
                return [dict(r) for r in (await conn.execute(query)).mappings().all()]
        finally:
            await db.dispose()

    deadline = time.monotonic() + timeout
    while True:
        rows = asyncio.run(read())
        if len(rows) >= wait_for or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
