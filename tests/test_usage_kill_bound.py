"""What a ``kill -9`` of a gateway loses: the request records (usage rows) of its last ``usage.flush_interval``.

A real ``lmops serve`` process in front of the fake upstream (its own process too) gets a steady stream of requests,
each with its own ``x-request-id``; it is killed with SIGKILL mid-stream, at a moment its
``lmops_usage_unflushed_rows`` gauge shows records waiting. Then the records in the database are compared with
the requests that got a 200. The bound is the documented one (config.UsageConfig, docs/access.md): the lost records
are those of requests that finished within the last ``flush_interval`` seconds, plus the time a write and the
loop's scheduling take (``SLACK_S``, generous for a loaded host). A writer that flushed only at shutdown, or less
often than configured, loses more and fails here.

``lmops worker`` records its calls through the same writer, built from the same ``usage`` settings by the same
``Services.build``, so the gateway stands for both.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from lmops.testing.server import free_port

pytestmark = pytest.mark.slow

SLACK_S = 0.25  # a write (ms on a healthy database) plus the event loop running late on a shared, loaded host
CLIENTS, PER_CLIENT_RATE = 4, 30.0  # ~120 requests/s, steady
BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _unflushed(text: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith("lmops_usage_unflushed_rows "))
                 .split()[1])


class Traffic:
    """Client threads at a steady rate (each request its own id), and a scraper of the gateway's gauge."""

    def __init__(self, url: str):
        self.url = url
        self.stop = threading.Event()
        self.sent: set[str] = set()
        self.ok: dict[str, float] = {}  # request id -> when its 200 was received (monotonic)
        self.scrapes: list[tuple[float, float]] = []  # (when the scrape was sent, lmops_usage_unflushed_rows)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]
        self._threads.append(threading.Thread(target=self._scraper, daemon=True))

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _client(self, n: int) -> None:
        every = 1.0 / PER_CLIENT_RATE
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            due, i = time.monotonic(), 0
            while not self.stop.is_set():
                rid = f"kill-{n}-{i}"
                i += 1
                with self._lock:
                    self.sent.add(rid)
                try:
                    r = client.post("/v1/chat/completions", json=BODY, headers={"x-request-id": rid})
                except httpx.HTTPError:
                    continue  # the gateway was killed
                if r.status_code == 200:
                    done = time.monotonic()
                    with self._lock:
                        self.ok[rid] = done
                due += every
                time.sleep(max(0.0, due - time.monotonic()))

    def _scraper(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    value = _unflushed(client.get("/metrics").text)
                except httpx.HTTPError:
                    return
                with self._lock:
                    self.scrapes.append((sent, value))
                time.sleep(0.02)

    def rate(self, since: float, until: float) -> float:
        with self._lock:
            return sum(since <= t <= until for t in self.ok.values()) / (until - since)


def _recorded_ids(database_url: str) -> set[str]:
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.split("///", 1)[1]) as conn:
            return {r[0] for r in conn.execute("SELECT request_id FROM request_records")}
    import psycopg

    with psycopg.connect(database_url) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM request_records")}


@pytest.fixture
def fake_upstream(tmp_path):
    port = free_port()
    log = tmp_path / "fake.log"
    proc = _start(["-m", "lmops.testing.fake_openai", "--port", str(port)], log)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


@pytest.mark.parametrize("database, flush_interval", [("sqlite", 0.3), ("sqlite", 1.5), ("postgresql", 0.5)])
def test_a_killed_gateway_loses_at_most_its_last_flush_interval_of_records(tmp_path, fake_upstream, request,
                                                                          database, flush_interval):
    """Two flush windows on SQLite, one on PostgreSQL."""
    database_url = (f"sqlite:///{tmp_path / 'lmops.db'}" if database == "sqlite"
                    else request.getfixturevalue("pg_url"))
    port = free_port()
    config = tmp_path / "lmops.yaml"
    config.write_text(yaml.safe_dump({
        "database_url": database_url,
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning"},
        # batch_size above what one interval brings: only the interval starts a write, the case the bound is about
        "usage": {"flush_interval": flush_interval, "batch_size": 100_000},
        "access": {"enabled": False},
        "batch": {"data_dir": str(tmp_path / "data"), "worker_in_process": False},
        "models": [{"name": "fake", "engine": "openai", "replicas": [fake_upstream]}],
    }))
    log = tmp_path / "gateway.log"
    gateway = _start(["-m", "lmops", "serve", "-c", str(config)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{url}/health", gateway, log)
        with Traffic(url) as traffic:
            started = time.monotonic()
            time.sleep(max(2.0, 4 * flush_interval))  # steady state, several flushes
            rate = traffic.rate(started + 0.5, time.monotonic())
            bound_s = flush_interval * 1.5 + SLACK_S
            # Kill mid-window: once the gauge, after a flush (a low reading), shows half an interval's worth waiting.
            want = max(1.0, rate * flush_interval / 2)
            deadline = time.monotonic() + 3 * flush_interval + 5
            low, seen = False, 0
            while True:
                with traffic._lock:
                    fresh, seen = traffic.scrapes[seen:], len(traffic.scrapes)
                for scrape in fresh:
                    low = low or scrape[1] < want
                if fresh and low and fresh[-1][1] >= want:
                    scrape = fresh[-1]
                    break
                assert time.monotonic() < deadline, f"the gauge never rose to {want:.0f} after a flush: {fresh}"
                time.sleep(0.005)
            killed_at = time.monotonic()
            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait(timeout=10)
        with traffic._lock:
            ok, sent, scrapes = dict(traffic.ok), set(traffic.sent), list(traffic.scrapes)
    finally:
        _stop(gateway)

    recorded = _recorded_ids(database_url)
    lost = {rid: killed_at - ok[rid] for rid in ok.keys() - recorded}  # request id -> age of its 200 at the kill
    most_waiting = max(v for _, v in scrapes)
    figures = (f"flush_interval={flush_interval}s rate={rate:.0f}/s ok={len(ok)} recorded={len(recorded)} "
               f"lost={len(lost)} oldest lost={max(lost.values(), default=0):.3f}s gauge at kill={scrape[1]:.0f} "
               f"gauge max={most_waiting:.0f}")
    print(figures)
    assert recorded <= sent, "a record for a request that was never sent"
    assert rate > 10 and len(ok) > rate, figures  # a steady stream ran for over a second
    if flush_interval >= 1:  # killed ~0.75 s before the next write: the kill did cost records (no flush on SIGKILL)
        assert lost, figures
    # The bound, as a count and as an age: nothing older than one flush window (plus slack) was lost.
    assert len(lost) <= rate * bound_s, figures
    assert all(age <= bound_s for age in lost.values()), figures
    # The gauge tells the operator what a kill would lose: the records it showed, plus those added since.
    assert len(lost) <= scrape[1] + sum(t >= scrape[0] for t in ok.values()), figures
    # And it never showed more than a window's worth waiting while the database was healthy.
    assert most_waiting <= rate * bound_s + CLIENTS, figures
