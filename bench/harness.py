"""Helpers shared by the benchmark scripts in bench/: servers as child processes, the load generator, machine facts.

The load generator is ``wrk`` (Debian package ``wrk``): written in C, it takes far less of the
machine's CPU than a Python client would, which matters on a 2-core box where the load
generator, the gateway and the upstream share the cores. Every target is driven by the same
wrk settings, so the comparison is fair even where wrk itself costs something. ``run_python_load``
measures the same things from a Python asyncio client, for comparison with Python-side load generators.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmops.testing.server import free_port  # noqa: F401 - re-exported for the bench scripts

# wrk script: POST the body from $BENCH_BODY with the extra headers in $BENCH_HEADERS ("Name: value" lines),
# print one JSON line with the summary at the end.
_WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+): ([^\n]*)") do
  wrk.headers[name] = value
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def machine_info() -> dict[str, str]:
    """What the numbers were measured on: cores, CPU model, Python."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}"}


def stop_children_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks stop the servers this script started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def post_json(url: str, body: bytes, timeout: float = 300.0) -> dict:
    """One POST with the standard library (readiness checks and the embedded benchmark's calls)."""
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Server:
    """A server started as a child process; ``ready_url`` answers 200 to ``ready_body`` once it serves."""

    def __init__(self, name: str, argv: Sequence[str], ready_url: str, ready_body: bytes,
                 env: dict[str, str] | None = None, log_dir: Path | None = None):
        self.name, self.argv, self.ready_url, self.ready_body = name, list(argv), ready_url, ready_body
        self.env = {**os.environ, **(env or {})}
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / f"bench-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> "Server":
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                post_json(self.ready_url, self.ready_body, timeout=10)
                return self
            except (OSError, urllib.error.URLError, ValueError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"{self.name} not ready after {timeout}s; see {self.log_path}") from None
                time.sleep(0.3)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by this server and every process below it."""
        return sum(_own_cpu_seconds(pid) for pid in _process_tree(self.pid))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only what it started
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _own_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass
class LoadResult:
    """One wrk run against one URL."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float | None = None  # CPU of the server under test, when measured
    requests: int = 0  # completed in the run


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, body: bytes, *, connections: int, seconds: float, server: Server | None = None,
            timeout_s: int = 10, headers: Mapping[str, str] | None = None) -> LoadResult:
    """Drive ``url`` with POSTs of ``body`` (and ``headers``) from ``connections`` keep-alive connections for
    ``seconds``.

    With ``server``, also measure that server's CPU time per request over the run.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_LUA)
        script = f.name
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", f"{round(timeout_s)}s",
            "-s", script, url]
    cpu_before = server.cpu_seconds() if server else 0.0
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True,
                             env={**os.environ, "BENCH_BODY": body.decode(),
                                  "BENCH_HEADERS": "".join(f"{k}: {v}\n" for k, v in (headers or {}).items())},
                             ).stdout
    finally:
        os.unlink(script)
    cpu = server.cpu_seconds() - cpu_before if server else None
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
    data = json.loads(line.split(" ", 1)[1])
    requests = data["requests"]
    return LoadResult(rps=requests / (data["duration_us"] / 1e6), p50_ms=data["p50_us"] / 1000,
                      p99_ms=data["p99_us"] / 1000, errors=data["socket_errors"] + data["status_errors"],
                      cpu_ms_per_request=(cpu * 1000 / requests) if cpu is not None and requests else None,
                      requests=requests)


def run_python_load(url: str, body: bytes, *, connections: int, seconds: float, server: Server | None = None,
                    headers: Mapping[str, str] | None = None) -> LoadResult:
    """``run_wrk``'s measurement from a Python asyncio client in this process (raw HTTP/1.1 keep-alive
    connections, plain or chunked answers): the kind of load generator a Python project reaches for first.
    It costs about a core at a few thousand requests/s, so on a small machine it caps what a fast server
    seems to serve; compare targets driven by the same generator only."""
    cpu_before = server.cpu_seconds() if server else 0.0
    latencies, errors, elapsed = asyncio.run(_python_load(url, body, connections, seconds, headers or {}))
    cpu = server.cpu_seconds() - cpu_before if server else None
    latencies.sort()
    done = len(latencies)
    return LoadResult(rps=(done - errors) / elapsed, p50_ms=latencies[done // 2] * 1000 if done else 0.0,
                      p99_ms=latencies[int(done * 0.99)] * 1000 if done else 0.0, errors=errors,
                      cpu_ms_per_request=(cpu * 1000 / done) if cpu is not None and done else None, requests=done)


async def _python_load(url: str, body: bytes, connections: int, seconds: float,
                       headers: Mapping[str, str]) -> tuple[list[float], int, float]:
    target = urllib.parse.urlsplit(url)
    request = (f"POST {target.path} HTTP/1.1\r\nhost: {target.netloc}\r\ncontent-type: application/json\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
               + f"content-length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors = [0]
    started = time.perf_counter()
    stop_at = started + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        try:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                writer.write(request)
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                at = head.find(b"\r\ncontent-length:") + 17
                if at >= 17:
                    await reader.readexactly(int(head[at:head.index(b"\r\n", at)]))
                else:  # chunked (a stream): chunks until the empty one
                    while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                        await reader.readexactly(size + 2)
                    await reader.readexactly(2)
                latencies.append(time.perf_counter() - sent)
                if head[9:12] != b"200":
                    errors[0] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return latencies, errors[0], time.perf_counter() - started


def median_result(results: Sequence[LoadResult]) -> LoadResult:
    """The median of each figure over repeated runs (robust to one noisy run on a shared machine)."""
    cpus = [r.cpu_ms_per_request for r in results if r.cpu_ms_per_request is not None]
    return LoadResult(
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
        cpu_ms_per_request=statistics.median(cpus) if cpus else None,
        requests=sum(r.requests for r in results),
    )


def machine_line() -> str:
    info = machine_info()
    return f"nproc={info['nproc']}, CPU {info['cpu']}, Python {info['python']}, {info['os']}"
