"""Engine saturation: output tokens/s through the batch pipeline vs driving the same engine directly.

Both sides send the same prompts (product-title requests from the synthetic catalogue) to the embedded
SmolLM2. "Direct" calls the engine object itself (no router, no queue) at each concurrency in
--direct-concurrency and keeps the best; "batch" runs an OpenAI batch of the same requests through
/v1/files + /v1/batches (upload, validation, queue, worker, router, results, output file), timed from
the batch's creation to its completion.

    python bench/bench_batch_saturation.py --requests 40 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import tempfile
import threading
import time

import httpx
import orjson

from lmops.app import create_app
from lmops.batch.catalogue import batch_lines
from lmops.config import load_settings
from lmops.services import Services
from lmops.testing.server import ServerThread


def requests(n: int, max_tokens: int) -> list[dict]:
    return list(batch_lines(n, "smollm2", seed=3, max_tokens=max_tokens))


async def direct(engine, bodies: list[dict], concurrency: int) -> tuple[float, int]:
    queue = list(bodies)
    tokens = 0

    async def runner() -> None:
        nonlocal tokens
        while queue:
            body = queue.pop()
            tokens += (await engine.chat_completion(body))["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return time.perf_counter() - t0, tokens


class BusySampler:
    """Samples, every 2 ms, whether the engine has a generation waiting or running."""

    def __init__(self, engine: object):
        self.engine, self.busy, self.total = engine, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.total += 1
            self.busy += getattr(self.engine, "_pending", 0) > 0

    def __enter__(self) -> "BusySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def fraction(self) -> float:
        return self.busy / self.total if self.total else 0.0


def run_batch(c: httpx.Client, lines: list[dict]) -> tuple[float, int]:
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    fid = c.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", io.BytesIO(data))}).json()["id"]
    t0 = time.perf_counter()
    b = c.post("/v1/batches", json={"input_file_id": fid, "endpoint": "/v1/chat/completions",
                                    "completion_window": "24h"}).json()
    while (b := c.get(f"/v1/batches/{b['id']}").json())["status"] not in ("completed", "failed"):
        time.sleep(0.05)
    assert b["request_counts"]["completed"] == len(lines), b
    return time.perf_counter() - t0, b["usage"]["output_tokens"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="direct and batch runs alternate this many times")
    p.add_argument("--direct-concurrency", default="1,2")
    p.add_argument("--batch-concurrency", type=int, default=2, help="worker requests in flight for the model")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    args = p.parse_args()
    lines = requests(args.requests, args.max_tokens)
    bodies = [{**line["body"], "model": "smollm2"} for line in lines]
    model = {"name": "smollm2", "engine": "embedded", "context_length": 1024, "queue_size": 64}
    if args.threads:
        model["threads"] = args.threads
    concurrencies = [int(x) for x in args.direct_concurrency.split(",")]
    direct_runs: dict[int, list[tuple[float, int]]] = {c: [] for c in concurrencies}
    direct_busy: dict[int, list[float]] = {c: [] for c in concurrencies}
    batch_runs: list[tuple[float, int]] = []
    busy: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, database_url=f"sqlite+aiosqlite:///{tmp}/b.db", models=[model],
                                 server={"log_level": "warning"},
                                 batch={"data_dir": f"{tmp}/data", "poll_seconds": 0.1,
                                        "model_concurrency": {"smollm2": args.batch_concurrency}})
        svc = Services.build(settings)
        engine = svc.core.router.deployments[0].replicas[0].engine  # the one engine both sides drive
        with ServerThread(create_app(services=svc)) as srv, httpx.Client(base_url=srv.url, timeout=600) as c:
            for _ in range(args.rounds):
                for conc in concurrencies:
                    with BusySampler(engine) as sampler:
                        direct_runs[conc].append(asyncio.run(direct(engine, bodies, conc)))
                    direct_busy[conc].append(sampler.fraction)
                with BusySampler(engine) as sampler:
                    batch_runs.append(run_batch(c, lines))
                busy.append(sampler.fraction)
    rate = lambda runs: sum(t for _, t in runs) / sum(s for s, _ in runs)  # noqa: E731
    direct_rates = {conc: rate(runs) for conc, runs in direct_runs.items()}
    best_conc = max(direct_rates, key=direct_rates.get)  # type: ignore[arg-type]
    results = {f"direct_c{conc}_tok_s": round(r, 1) for conc, r in direct_rates.items()}
    results.update(batch_tok_s=round(rate(batch_runs), 1), best_direct_concurrency=best_conc,
                   ratio=round(rate(batch_runs) / direct_rates[best_conc], 3),
                   engine_busy_fraction_during_batch=round(sum(busy) / len(busy), 3),
                   **{f"engine_busy_fraction_direct_c{c}": round(sum(b) / len(b), 3) for c, b in direct_busy.items()},
                   rounds=args.rounds, requests=args.requests, max_tokens=args.max_tokens, threads=args.threads,
                   batch_concurrency=args.batch_concurrency, loadavg_1m=os.getloadavg()[0])
    print(orjson.dumps(results).decode())


if __name__ == "__main__":
    main()
