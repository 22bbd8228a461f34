"""Event-loop CPU of one 500-row request-record flush on PostgreSQL: SQLAlchemy's INSERT vs asyncpg's COPY.

    .venv/bin/python bench/bench_record_flush.py [--pg postgresql://postgres@127.0.0.1:5432/postgres]

The flush runs on the gateway's event loop, so its CPU time is a stall every request in flight waits out.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import datetime, timezone

import psycopg
from sqlalchemy import insert

from lmops.ids import new_id
from lmops.store.database import create_engine, upgrade_async
from lmops.usage.batch_writer import BatchWriter
from lmops.usage.records import RequestRecord

FLUSHES, ROWS = 20, 500


def records(now: datetime) -> list[dict[str, object]]:
    """One flush's worth of request records, as the gateway writes them."""
    return [{"id": new_id(), "request_id": new_id("req_"), "created_at": now,
             "endpoint": "chat.completions", "model": "fake", "replica": "http://x/v1", "stream": False,
             "prompt_tokens": 7, "completion_tokens": 10, "latency_ms": 1.5, "ttft_ms": None, "status": 200,
             "error": None} for _ in range(ROWS)]


async def main(admin: str) -> None:
    name = f"lmops_b_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rsplit('/', 1)[0]}/{name}"
    try:
        await upgrade_async(url)
        engine = create_engine(url)
        writer = BatchWriter(engine, RequestRecord.__table__)

        async def sqlalchemy_insert(rows: list[dict[str, object]]) -> None:
            async with engine.begin() as conn:
                await conn.execute(insert(RequestRecord.__table__), rows)

        now = datetime.now(timezone.utc)
        for label, flush in (("sqlalchemy insert", sqlalchemy_insert), ("asyncpg COPY", writer._copy_asyncpg)):
            batches = [records(now) for _ in range(FLUSHES)]
            cpu, wall = time.process_time(), time.perf_counter()
            for rows in batches:
                await flush(rows)
            print(f"{label}: {(time.process_time() - cpu) / FLUSHES * 1000:.1f} ms CPU per {ROWS}-row flush, "
                  f"wall {(time.perf_counter() - wall) / FLUSHES * 1000:.1f} ms")
        await engine.dispose()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a database to create others from")
    asyncio.run(main(parser.parse_args().pg))
