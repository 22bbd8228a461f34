"""Memory: upload a 1,000,000-line OpenAI batch file over HTTP, process it, download the output; peak RSS.

The gateway (with its in-process worker and an instant in-process engine) and this driver share one
process, so the peak RSS printed covers upload, validation, queueing, processing and finalizing.

    python bench/bench_batch_memory.py --lines 1000000 --db postgres
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from lmops.app import create_app
from lmops.config import load_settings
from lmops.services import Services
from lmops.testing.instant_engine import use_instant_engines
from lmops.testing.server import ServerThread

from bench_batch_control_plane import drop_postgres, postgres_db  # noqa: E402


def rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def write_input(path: Path, lines: int) -> None:
    with path.open("wb") as f:
        for i in range(lines):
            f.write(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "instant", "max_tokens": 8,
                                           "messages": [{"role": "user", "content": f"Title for product {i}"}]}})
                    + b"\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = postgres_db() if args.db == "postgres" else f"sqlite+aiosqlite:///{tmp}/bench.db"
        try:
            settings = load_settings(None, database_url=url, health={"interval": 3600},
                                     models=[{"name": "instant", "engine": "openai",
                                              "replicas": ["http://127.0.0.1:9/v1"]}],
                                     server={"log_level": "warning"},
                                     access={"enabled": False},  # the batch path's memory, not the keys'
                                     batch={"data_dir": f"{tmp}/data", "concurrency": 512, "max_items_in_flight": 1024,
                                            "claim_batch": 512, "max_upload_bytes": 2 << 30, "intake_chunk": 5000})
            svc = Services.build(settings)
            use_instant_engines(svc.core.router)
            src = Path(tmp) / "input.jsonl"
            write_input(src, args.lines)
            size = src.stat().st_size
            base = rss_mb()
            with ServerThread(create_app(services=svc)) as srv, httpx.Client(base_url=srv.url, timeout=600) as c:
                t0 = time.perf_counter()
                with src.open("rb") as f:
                    up = c.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", f)})
                    file_id = up.json()["id"]
                upload = time.perf_counter() - t0
                src.unlink()
                after_upload = rss_mb()
                batch = c.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                    "completion_window": "24h"}).json()
                while (b := c.get(f"/v1/batches/{batch['id']}").json())["status"] not in ("completed", "failed"):
                    time.sleep(1)
                done = time.perf_counter() - t0
                assert b["status"] == "completed" and b["request_counts"]["completed"] == args.lines, b
                lines = 0
                with c.stream("GET", f"/v1/files/{b['output_file_id']}/content") as r:
                    for chunk in r.iter_bytes():
                        lines += chunk.count(b"\n")
                assert lines == args.lines
            print(orjson.dumps({"lines": args.lines, "input_mb": round(size / 2**20), "db": args.db,
                                "upload_s": round(upload, 1), "total_s": round(done, 1),
                                "items_per_s": round(args.lines / (done - upload)),
                                "rss_before_upload_mb": base, "peak_rss_after_upload_mb": after_upload,
                                "peak_rss_mb": rss_mb(), "loadavg_1m": os.getloadavg()[0]}).decode())
        finally:
            if args.db == "postgres":
                drop_postgres(url)


if __name__ == "__main__":
    main()
