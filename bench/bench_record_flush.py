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

from lmops.ids import sortable_hex
from lmops.store.database import create_engine, upgrade_async
from lmops.usage.batch_writer import BatchWriter
from lmops.usage.records import RequestRecord

async def main(admin: str) -> None:
    name = f"lmops_b_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c: c.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rsplit('/', 1)[0]}/{name}"
    try:
        await upgrade_async(url); eng = create_engine(url); w = BatchWriter(eng, RequestRecord.__table__)
        now = datetime.now(timezone.utc)
        def rows(): return [{"id": sortable_hex(), "request_id": "req_" + sortable_hex(), "created_at": now, "endpoint": "chat.completions", "model": "fake", "replica": "http://x/v1", "stream": False, "prompt_tokens": 7, "completion_tokens": 10, "latency_ms": 1.5, "ttft_ms": None, "status": 200, "error": None} for _ in range(500)]
        for label, fn in (("sqlalchemy insert", None), ("asyncpg COPY", w._copy_asyncpg)):
            batches = [rows() for _ in range(20)]
            t = time.process_time(); wall = time.perf_counter()
            for b in batches:
                if fn is None:
                    async with eng.begin() as conn: await conn.execute(insert(RequestRecord.__table__), b)
                else:
                    await fn(b)
            print(f"{label}: {(time.process_time()-t)/20*1000:.1f} ms CPU per 500-row flush, wall {(time.perf_counter()-wall)/20*1000:.1f} ms")
        await eng.dispose()
    finally:
        with psycopg.connect(admin, autocommit=True) as c: c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="a database to create others from")
    asyncio.run(main(p.parse_args().pg))
