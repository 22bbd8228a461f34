"""Benchmarks of access and billing.

throughput: requests/s through the gateway with access control + limits + ledger off and on, against the same
    fake upstream, in one run: rounds interleaved in alternating order, or with ``--concurrent`` every gateway
    loaded at the same moment (the steadier comparison on a shared machine); ``--control`` adds a second "off"
    gateway whose difference from the first is the run's noise. Load: wrk when installed, else a Python client.
report:     the usage report over 1,000,000 ledger rows on PostgreSQL.

    python bench/bench_access.py throughput --seconds 10 --rounds 3 [--redis redis://127.0.0.1:6379/0]
        [--headers-always] [--concurrent] [--control] [--load wrk|python] [--limits all|typical]
        [--pg postgresql://postgres@127.0.0.1:5432/test]  (each gateway on a fresh database there, not SQLite)
    python bench/bench_access.py report --rows 1000000 [--pg postgresql://postgres@127.0.0.1:5432/test]
    python bench/bench_access.py guard [--redis redis://127.0.0.1:6379/0]
guard:      CPU time of the access guard alone (admit + settle), in process: immune to the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness import run_python_load, run_wrk, wrk_available
from lmops.testing.server import free_port

BODY = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}).encode()


def _drive(load: str, port: int, key: str | None, seconds: float, concurrency: int) -> dict[str, float]:
    """``seconds`` of POSTs at ``concurrency`` from the chosen load generator: wrk (C, a few percent of a core)
    or harness's Python client (about a core of its own, which it takes from the servers on a small machine)."""
    run = run_python_load if load == "python" else run_wrk
    result = run(f"http://127.0.0.1:{port}/v1/chat/completions", BODY, connections=concurrency, seconds=seconds,
                 headers={"Authorization": f"Bearer {key}"} if key else None)
    return {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "errors": result.errors,
            "requests": result.requests}


# -- processes ------------------------------------------------------------------------------------------------
def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: unlike wall-clock req/s, other tenants' load does not move it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gateway(workdir: Path, name: str, upstream: str, access: dict[str, Any], env: dict[str, str],
             database_url: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "database_url": database_url or f"sqlite:///{workdir / (name + '.db')}",
        "models": [{"name": "fake", "engine": "openai", "replicas": [f"{upstream}/v1"]}],
        "access": access, "server": {"log_level": "warning"},
        # A starved 2-core machine must not eject the upstream mid-run (that would turn a round into fast 503s).
        "health": {"interval": 5, "timeout": 15, "failure_threshold": 5},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "lmops", "serve", "--config", str(config), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / f"{name}.log", "wb"))
    _wait(f"http://127.0.0.1:{port}/health", proc)
    return proc, port


_EVERY_LIMIT = {"models": ["fake"], "rpm": 10**9, "tpm": 2**31 - 1, "max_parallel": 10**6, "budget_usd": 10**9,
                "budget_tokens": 10**12, "budget_period": "month"}
# (team limits, key limits), all high enough never to refuse
LIMIT_SETS = {
    # every kind of limit on both the team and the key: ten checks and eight counter updates per request
    "all": (_EVERY_LIMIT, _EVERY_LIMIT),
    # a common setup: the team's models and monthly budget in dollars, the key's requests and tokens per minute
    "typical": ({"models": ["fake"], "budget_usd": 10**9, "budget_period": "month"},
                {"rpm": 10**9, "tpm": 2**31 - 1}),
}


def _limited_key(port: int, admin_key: str, limits: str) -> str:
    """A team and a key with the limits of ``LIMIT_SETS[limits]``."""
    team_limits, key_limits = LIMIT_SETS[limits]
    admin = httpx.Client(base_url=f"http://127.0.0.1:{port}/admin", headers={"authorization": f"Bearer {admin_key}"})
    team = admin.post("/teams", json={"name": "bench"}).json()
    admin.put(f"/limits/team/{team['id']}", json=team_limits).raise_for_status()
    key = admin.post("/keys", json={"team": team["id"]}).json()
    admin.put(f"/limits/key/{key['id']}", json=key_limits).raise_for_status()
    return key["key"]


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    if args.concurrent and args.load != "wrk":
        raise SystemExit("--concurrent needs wrk (apt-get install wrk): Python load generators would share one GIL")
    workdir = Path(tempfile.mkdtemp(prefix="lmops-bench-"))
    up_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    databases: dict[str, str] = {}

    def database(mode: str) -> str | None:
        if not args.pg:
            return None
        databases[mode] = _create_pg_database(args.pg)
        return databases[mode]

    env = {k: v for k, v in os.environ.items() if not k.startswith("LMOPS_")}
    admin_key = f"lmops-{secrets.token_hex(4)}-{secrets.token_urlsafe(24)}"
    try:
        up = subprocess.Popen([sys.executable, "-m", "lmops.testing.fake_openai", "--port", str(up_port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(up)
        upstream = f"http://127.0.0.1:{up_port}"
        _wait(f"{upstream}/v1/models", up)
        prices = {"fake": {"input": 0.5, "output": 1.5}}
        modes: dict[str, tuple[int, str | None]] = {}
        pids: dict[str, int] = {}
        proc, port = _gateway(workdir, "off", upstream, {"enabled": False}, env, database("off"))
        procs.append(proc)
        modes["off"], pids["off"] = (port, None), proc.pid
        on_env = {**env, "LMOPS_ADMIN_KEY": admin_key, "LMOPS_SECRET": secrets.token_hex(16)}
        proc, port = _gateway(workdir, "on", upstream, {"prices": prices}, on_env, database("on"))
        procs.append(proc)
        modes["on"], pids["on"] = (port, _limited_key(port, admin_key, args.limits)), proc.pid
        if args.headers_always:
            proc, port = _gateway(workdir, "on_always", upstream, {"prices": prices, "rate_limit_headers": "always"},
                                  on_env, database("on_always"))
            procs.append(proc)
            modes["on_always"], pids["on_always"] = (port, _limited_key(port, admin_key, args.limits)), proc.pid
        if args.redis:
            redis_env = {**on_env, "LMOPS_REDIS_URL": args.redis}
            proc, port = _gateway(workdir, "on_redis", upstream,
                                  {"prices": prices, "redis_prefix": f"bench{secrets.token_hex(3)}"}, redis_env,
                                  database("on_redis"))
            procs.append(proc)
            modes["on_redis"], pids["on_redis"] = (port, _limited_key(port, admin_key, args.limits)), proc.pid
        if args.control:  # A/A: a second gateway exactly like "off", so the report shows the noise floor
            proc, port = _gateway(workdir, "off_control", upstream, {"enabled": False}, env, database("off_control"))
            procs.append(proc)
            modes["off_control"], pids["off_control"] = (port, None), proc.pid
        for port, key in modes.values():  # warm up
            _drive(args.load, port, key, args.warmup, args.concurrency)
        rounds: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        order = list(modes)

        def measure(mode: str) -> dict[str, float]:
            port, key = modes[mode]
            cpu = _cpu_seconds(pids[mode])
            result = _drive(args.load, port, key, args.seconds, args.concurrency)
            result["cpu_ms_per_request"] = (_cpu_seconds(pids[mode]) - cpu) * 1000 / max(1, result["requests"])
            result["rps_per_core"] = 1000 / result["cpu_ms_per_request"]
            rounds[mode].append(result)
            print(f"  {mode:11s} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:.1f} ms  "
                  f"p99 {result['p99_ms']:.1f} ms  gateway CPU {result['cpu_ms_per_request']:.3f} ms/request "
                  f"(= {result['rps_per_core']:.0f} req/s per core)  errors {result['errors']}", file=sys.stderr)
            return result

        for n in range(args.rounds):
            # Let the previous measurement's record/ledger flush (and PostgreSQL's work on it) finish first:
            # otherwise it lands on whichever mode runs next.
            time.sleep(args.pause)
            if args.concurrent:
                # Every gateway under load at once: each sees the same moment of a shared machine, and the
                # scheduler gives each the same CPU share, so requests/s compare their cost per request.
                with ThreadPoolExecutor(len(order)) as pool:
                    list(pool.map(measure, order))
                continue
            # Alternate the order (off, on, ... then ..., on, off): a machine that speeds up or slows down
            # during a run favours neither mode.
            for i, mode in enumerate(order if n % 2 == 0 else order[::-1]):
                if i:
                    time.sleep(args.pause)
                measure(mode)
        time.sleep(1.0)
        ledger = _ledger_count(databases.get("on") or f"sqlite:///{workdir / 'on.db'}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)
        for url in databases.values():
            _drop_pg_database(args.pg, url)
    # A round in which any mode answered an error is left out of the comparison (and reported).
    valid = [i for i in range(args.rounds) if all(rounds[m][i]["errors"] == 0 for m in modes)]
    measures = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "rps_per_core")
    summary = {mode: {k: statistics.median(results[i][k] for i in valid) for k in measures}
               | {"errors": sum(r["errors"] for r in results), "requests": sum(r["requests"] for r in results)}
               for mode, results in rounds.items()}
    for mode in summary:
        # Rounds run back to back, so each round's on/off pair shares the machine's load: compare pairs.
        summary[mode]["paired_rps_vs_off"] = statistics.median(
            rounds[mode][i]["rps"] / rounds["off"][i]["rps"] - 1.0 for i in valid)
        summary[mode]["paired_cpu_per_request_vs_off"] = statistics.median(
            rounds[mode][i]["cpu_ms_per_request"] / rounds["off"][i]["cpu_ms_per_request"] - 1.0 for i in valid)
    return {"modes": summary, "rounds": rounds, "valid_rounds": valid, "ledger_rows_on": ledger,
            "database": "postgresql" if args.pg else "sqlite", "seconds": args.seconds, "warmup": args.warmup,
            "pause": args.pause, "load": args.load, "concurrent": args.concurrent, "rounds_n": args.rounds,
            "concurrency": args.concurrency, "limits": args.limits, "machine": _machine()}


def _ledger_count(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM request_records WHERE team_id IS NOT NULL")
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def _create_pg_database(admin_url: str) -> str:
    import psycopg

    name = f"lmops_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


def _drop_pg_database(admin_url: str, url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


# -- the guard alone, in process ------------------------------------------------------------------------------
def guard(args: argparse.Namespace) -> dict[str, Any]:
    """CPU time of admit + settle for one request with every rule set on team and key (memory or Redis counters)."""
    from starlette.requests import Request

    from lmops.access.rules import Limits
    from lmops.serving.context import RequestContext
    from lmops.testing.access import running_access
    from lmops.testing.settings import make_settings

    async def run() -> dict[str, float]:
        workdir = Path(tempfile.mkdtemp(prefix="lmops-bench-guard-"))
        extra = {"redis_url": args.redis} if args.redis else {}
        models = [{"name": "fake", "engine": "openai", "replicas": ["http://127.0.0.1:9/v1"]}]
        access_cfg = {"enabled": True, "bootstrap": False, "redis_prefix": f"bg{secrets.token_hex(3)}",
                      "prices": {"fake": {"input": 0.5, "output": 1.5}}}
        settings = make_settings(workdir, models, access=access_cfg, **extra)
        async with running_access(settings) as (access, admin):
            team = await admin.create_team(None, "bench")
            row, key = await admin.issue_key(None, team["id"])
            limits = Limits(models=("fake",), rpm=10**9, tpm=2**31 - 1, max_parallel=10**6, budget_usd=1e9,
                            budget_tokens=10**12)
            await admin.set_limits(None, "team", team["id"], limits)
            await admin.set_limits(None, "key", row["id"], limits)
            scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                     "headers": [(b"authorization", f"Bearer {key}".encode())]}

            async def one() -> None:
                ctx = RequestContext(request_id="r", endpoint="chat.completions", model="fake", max_tokens=10,
                                     body_bytes=80)
                await access.guard.admit(Request(scope), ctx)
                ctx.prompt_tokens, ctx.completion_tokens = 7, 10
                access.guard.settle(ctx)

            for _ in range(200):
                await one()
            await asyncio.sleep(0)
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(args.requests):
                await one()
                if i % 100 == 0:
                    await asyncio.sleep(0)  # let the ledger writer run, as a serving loop does
            await access.counters.drain()
            return {"cpu_us_per_request": (time.process_time() - cpu) / args.requests * 1e6,
                    "wall_us_per_request": (time.perf_counter() - wall) / args.requests * 1e6}

    return {"counters": "redis" if args.redis else "memory", "requests": args.requests, **asyncio.run(run()),
            "machine": _machine()}


# -- report over 1M ledger rows -------------------------------------------------------------------------------
def report(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    from lmops.store.database import create_engine, upgrade
    from lmops.usage.reports import DIMENSIONS, usage_report

    name = f"lmops_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.pg.rsplit('/', 1)[0]}/{name}"
    try:
        upgrade(url)
        started = time.perf_counter()
        _copy_rows(url, args.rows)
        load_s = time.perf_counter() - started

        async def run() -> dict[str, list[float]]:
            db = create_engine(url)
            times: dict[str, list[float]] = {}
            try:
                for by in (*DIMENSIONS, "team,model,day"):
                    for _ in range(args.repeat):
                        t = time.perf_counter()
                        result = await usage_report(db, by)
                        times.setdefault(by, []).append(time.perf_counter() - t)
                    assert result.totals.requests == args.rows
                t = time.perf_counter()
                month = datetime(2025, 6, 1, tzinfo=timezone.utc)
                await usage_report(db, "model", since=month, until=month + timedelta(days=30), team_id="team_7")
                times["model, one team, one month"] = [time.perf_counter() - t]
            finally:
                await db.dispose()
            return times

        times = asyncio.run(run())
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {"rows": args.rows, "load_s": load_s, "report_s": {k: min(v) for k, v in times.items()},
            "report_s_all": times, "machine": _machine()}


def _copy_rows(url: str, rows: int) -> None:
    """1M rows over a year: 50 teams, 500 users, 1000 keys, 6 models; written with COPY."""
    import psycopg

    rng = random.Random(1)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    models = ["llama-70b", "llama-8b", "qwen-32b", "smollm2", "mistral-7b", "embed"]
    columns = ("id, request_id, created_at, day, team_id, user_id, key_id, model, endpoint, stream, prompt_tokens, "
               "completion_tokens, cost_usd, latency_ms, status")
    with psycopg.connect(url.replace("+asyncpg", "")) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY request_records ({columns}) FROM STDIN") as copy:
                for i in range(rows):
                    team = rng.randrange(50)
                    p, c = rng.randrange(2000), rng.randrange(500)
                    at = start + timedelta(seconds=rng.randrange(365 * 86400))
                    user = f"user_{team}_{rng.randrange(10)}"
                    copy.write_row((f"{i:032x}", f"req_{i}", at, at.date(), f"team_{team}", user,
                                    f"key_{rng.randrange(1000)}", rng.choice(models), "chat.completions", False,
                                    p, c, (p * 0.5 + c * 1.5) / 1e6, rng.uniform(50, 2000), 200))
        conn.execute("ANALYZE request_records")
        conn.commit()


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "processor": _cpu_model()}


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--seconds", type=float, default=10)
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--concurrency", type=int, default=32)
    t.add_argument("--warmup", type=float, default=3.0, help="seconds of load on each gateway before measuring")
    t.add_argument("--pause", type=float, default=1.5, help="idle seconds before each measurement")
    t.add_argument("--redis", default=None, help="also measure with limits in this Redis")
    t.add_argument("--headers-always", action="store_true",
                   help="also measure access.rate_limit_headers=always (x-ratelimit-* on every admitted request; "
                        "before session 12 that was the default, and --refusals-only measured the other mode)")
    t.add_argument("--pg", default=None, help="PostgreSQL server URL: each gateway gets a fresh database there")
    t.add_argument("--concurrent", action="store_true",
                   help="load every gateway at the same time (each with its own wrk) instead of one after another")
    t.add_argument("--control", action="store_true",
                   help="add a second access-off gateway (A/A control): its difference from 'off' is the noise")
    t.add_argument("--load", choices=("wrk", "python"), default="wrk" if wrk_available() else "python",
                   help="load generator (default: wrk when installed)")
    t.add_argument("--limits", choices=sorted(LIMIT_SETS), default="all",
                   help="limits of the access-on gateways' team and key (default: every kind on both)")
    g = sub.add_parser("guard")
    g.add_argument("--requests", type=int, default=20000)
    g.add_argument("--redis", default=None, help="counters in this Redis instead of memory")
    r = sub.add_parser("report")
    r.add_argument("--rows", type=int, default=1_000_000)
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    result = {"throughput": throughput, "guard": guard, "report": report}[args.what](args)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
