"""``lmops bench``'s own ceiling: the requests/s its client sustains on one core against the fake upstream.

The fake upstream (``python -m lmops.testing.fake_openai``: 10 streamed tokens and a usage chunk per request, no
delay) runs in its own process pinned to another core than the client, so that the two never share a core;
``lmops bench`` itself (the real command: progress bar, requests.jsonl, the reports) is pinned to one core
with ``taskset``. The figure is the level's requests/s from the summary.json the run writes; the fake's CPU
use during the run says whether the fake, not the client, was the limit, and the client's CPU time during the
level (recorded in summary.json) gives its ceiling on a core of its own: requests per CPU-second, which
holds better than the wall-clock figure on a shared machine. Target (issue 24): >= 1,000 req/s.

    python bench/bench_bench_client.py --requests 6000 --concurrency 16,64 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Server, free_port, machine_info, stop_children_on_sigterm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=6000, help="requests per level")
    p.add_argument("--concurrency", default="16,64", help="levels to run (each one a separate lmops bench run)")
    p.add_argument("--repeat", type=int, default=3, help="runs per level (the median is reported)")
    p.add_argument("--client-core", type=int, default=0)
    p.add_argument("--fake-core", type=int, default=1)
    a = p.parse_args()
    stop_children_on_sigterm()
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    if not pin:
        print("taskset is missing or there is one core: client and fake share the machine unpinned")

    def pinned(core: int, argv: list[str]) -> list[str]:
        return ["taskset", "-c", str(core), *argv] if pin else argv

    port = free_port()
    fake = Server("fake", pinned(a.fake_core, [sys.executable, "-m", "lmops.testing.fake_openai", "--port",
                                               str(port)]),
                  f"http://127.0.0.1:{port}/v1/chat/completions", b'{"model": "fake", "messages": []}').start()
    results: dict[str, list[tuple[float, float, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(a.repeat):
                for c in a.concurrency.split(","):
                    out = Path(tmp) / f"c{c}"
                    cpu0, t0 = fake.cpu_seconds(), time.monotonic()
                    subprocess.run(pinned(a.client_core, [
                        sys.executable, "-m", "lmops", "bench", "-t", f"fake=http://127.0.0.1:{port}",
                        "--concurrency", c, "--requests", str(a.requests), "--rounds", "1", "--slo", "ttft=1s",
                        "--out", str(out)]), check=True, capture_output=True)
                    level = json.loads((out / "summary.json").read_text())["levels"][0]
                    assert level["completed"] == a.requests, level["errors"]
                    fake_cpu = (fake.cpu_seconds() - cpu0) / level["seconds"]  # the fake idles outside the level
                    per_cpu_s = level["completed"] / (level["client_cpu"] * level["seconds"])
                    results.setdefault(c, []).append((level["req_per_s"], per_cpu_s, fake_cpu))
                    print(f"c={c}: {level['req_per_s']:,.0f} req/s; client at {level['client_cpu']:.0%} of its core, "
                          f"{per_cpu_s:,.0f} requests per client CPU-second; fake upstream at {fake_cpu:.0%} of a "
                          f"core ({time.monotonic() - t0:.1f} s with the client's start and reports)", flush=True)
    finally:
        fake.stop()
    print(json.dumps(machine_info()))
    for c, runs in results.items():
        print(f"c={c}: median {statistics.median(r for r, _, _ in runs):,.0f} req/s, "
              f"{statistics.median(p for _, p, _ in runs):,.0f} requests per client CPU-second over {len(runs)} runs "
              f"(fake upstream at {statistics.median(f for _, _, f in runs):.0%} of its core)")


if __name__ == "__main__":
    main()
