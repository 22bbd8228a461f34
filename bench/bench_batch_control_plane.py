"""Control-plane capacity: items/s through the batch queue with an instant in-process engine (no HTTP).

The engine answers at once, so the figure measures the queue and bookkeeping alone: claim, workflow
(one llm step: prompt render, router, request record and usage), results + ack in one transaction.

    python bench/bench_batch_control_plane.py --db postgres --items 100000
    python bench/bench_batch_control_plane.py --db sqlite --items 50000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from lmops.batch.workflows import LLMStep, Prompt, Workflow
from lmops.config import load_settings
from lmops.services import Services
from lmops.testing.instant_engine import use_instant_engines
from lmops.testing.settings import secret_file_in

ONE_STEP = Workflow("one-step", (LLMStep("title", prompt=Prompt("v1", "Title for: {{ record.name }}"),
                                         params={"max_tokens": 8}),))


def postgres_db() -> str:
    import psycopg

    admin = os.environ.get("LMOPS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"lmops_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0] + "/" + name


def drop_postgres(url: str) -> None:
    import psycopg

    admin = os.environ.get("LMOPS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


async def run(args: argparse.Namespace, url: str, data: Path) -> dict:
    settings = load_settings(None, database_url=url,
                             models=[{"name": "instant", "engine": "openai", "replicas": ["http://127.0.0.1:9/v1"]}],
                             health={"interval": 3600},
                             access={"secret_file": str(secret_file_in(data))},  # PostgreSQL needs one
                             batch={"data_dir": str(data), "worker_in_process": False,
                                    "concurrency": args.in_flight, "max_items_in_flight": args.in_flight,
                                    "claim_batch": args.claim, "ack_interval": 0.02, "poll_seconds": 0.02,
                                    "intake_chunk": 5000, "metrics_interval": 3600})
    svc = Services.build(settings)
    use_instant_engines(svc.core.router)
    await svc.start(migrate=True)
    batch = svc.batch
    batch.registry.register(ONE_STEP)
    try:
        records = b"".join(orjson.dumps({"id": i, "name": f"product {i}"}) + b"\n" for i in range(args.items))
        source = await batch.files.save_bytes("bench", "enrichment", "records.jsonl", records)
        job = await batch.jobs.create(team_id="bench", kind="enrichment", workflow="one-step",
                                      input_file_id=source.id, params={"format": "jsonl"})
        t0 = time.perf_counter()
        await batch.upkeep("bench")  # intake: the whole file queued
        intake = time.perf_counter() - t0
        t1, cpu1 = time.perf_counter(), time.process_time()
        batch.start_worker(name="bench")
        while (await batch.jobs.status(job.id)) != "completed":
            await asyncio.sleep(0.05)
        elapsed, cpu = time.perf_counter() - t1, time.process_time() - cpu1
        row = await batch.jobs.row(job.id)
        assert row.completed == args.items and row.failed == 0, (row.completed, row.failed)
        await svc.core.records.flush()
    finally:
        await svc.stop()
    return {"items": args.items, "intake_s": round(intake, 2), "intake_items_per_s": round(args.items / intake),
            "process_s": round(elapsed, 2), "items_per_s": round(args.items / elapsed),
            "worker_cpu_us_per_item": round(cpu / args.items * 1e6), "loadavg_1m": os.getloadavg()[0],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--in-flight", type=int, default=1024, help="items (and model calls) in flight")
    p.add_argument("--claim", type=int, default=512, help="items per claim")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = postgres_db() if args.db == "postgres" else f"sqlite+aiosqlite:///{tmp}/bench.db"
        try:
            result = asyncio.run(run(args, url, Path(tmp)))
        finally:
            if args.db == "postgres":
                drop_postgres(url)
    result.update(db=args.db, cpus=os.cpu_count(), python=platform.python_version(), machine=platform.machine())
    print(orjson.dumps(result).decode())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
