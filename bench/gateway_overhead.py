"""Gateway overhead: lmops vs LiteLLM proxy vs the bare upstream, side by side in one run.

What it measures (issue 2): one fast fake OpenAI-compatible upstream
(``lmops.testing.fake_openai``, fixed answer, no delay) serves three targets, all driven by the
same load generator (wrk, one thread; or with ``--load python`` a Python asyncio client) with the same
request body:

- ``upstream``: the fake upstream called directly (the ceiling);
- ``lmops``: ``lmops serve`` (one worker process, SQLite request records) in front of it;
- ``litellm``: the LiteLLM proxy (one worker, no database, logging/telemetry off) in front of it.

With ``--reference``, two more: ``ref-upstream`` (``bench/reference_upstream.py``: the same answers from a FastAPI +
pydantic app, the stack vLLM's and lmdeploy's OpenAI servers run on, about as fast as the bare upstream quoted in
issue 2) and ``lmops-ref``, a second ``lmops serve`` in front of it. Each gateway's ratio is to the upstream it
fronts, measured in the same round.

With ``--baseline SRC`` (the ``src`` folder of another checkout, e.g. a ``git worktree`` of an earlier commit),
``lmops-base`` runs that code in front of the same upstream: the two versions side by side in one run, which a
noisy shared host needs to tell them apart.

For each of plain and streamed chat completions, each round measures every target back to back
(order rotated per round): requests/s at saturation (``--connections`` connections) with the
server's CPU time per request, then p50/p99 latency at concurrency 1. Figures are medians over
rounds; "added" latency is the target's minus the bare upstream's, from the same round.

Run (LiteLLM in its own venv, see docs/benchmarks.md):
    .venv/bin/python bench/gateway_overhead.py --litellm /tmp/litellm-venv/bin/litellm
    .venv/bin/python bench/gateway_overhead.py --no-litellm --rounds 1 --seconds 3   # quick check
    .venv/bin/python bench/gateway_overhead.py --no-litellm --reference --rounds 5 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import (LoadResult, Server, free_port, machine_line, median_result, run_python_load, run_wrk,
                     stop_children_on_sigterm, wrk_available)

MODEL = "fake"
PATH = "/v1/chat/completions"


def chat_body(stream: bool) -> bytes:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
                               "max_tokens": 16, "temperature": 0}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def start_upstream(tmp: Path) -> Server:
    port = free_port()
    return Server("upstream", [sys.executable, "-m", "lmops.testing.fake_openai", "--port", str(port)],
                  f"http://127.0.0.1:{port}{PATH}", chat_body(False), log_dir=tmp).start()


def start_reference_upstream(tmp: Path) -> Server:
    port = free_port()
    script = Path(__file__).with_name("reference_upstream.py")
    return Server("ref-upstream", [sys.executable, str(script), str(port)], f"http://127.0.0.1:{port}{PATH}",
                  chat_body(False), log_dir=tmp).start()


def start_lmops(tmp: Path, upstream: str, name: str = "lmops", source: Path | None = None) -> Server:
    port = free_port()
    config = tmp / f"{name}.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "database_url": f"sqlite:///{tmp / name}.db",
        "models": [{"name": MODEL, "engine": "openai", "upstream_model": MODEL, "replicas": [upstream]}],
        "access": {"enabled": False},  # the foundation path; bench_access.py measures access on vs off
        "batch": {"worker_in_process": False},
    }))
    lmops = Path(sys.executable).with_name("lmops")
    env = {"PYTHONPATH": str(source)} if source else None  # ahead of the installed (editable) lmops
    return Server(name, [str(lmops), "serve", "-c", str(config), "--port", str(port), "--workers", "1"],
                  f"http://127.0.0.1:{port}{PATH}", chat_body(False), env=env, log_dir=tmp).start()


def start_floor(tmp: Path, upstream: str) -> Server:
    port = free_port()
    script = Path(__file__).with_name("floor_proxy.py")
    return Server("floor", [sys.executable, str(script), upstream, str(port)], f"http://127.0.0.1:{port}{PATH}",
                  chat_body(False), log_dir=tmp).start()


def start_litellm(tmp: Path, upstream: str, litellm: str) -> Server:
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": MODEL,
                        "litellm_params": {"model": f"openai/{MODEL}", "api_base": upstream, "api_key": "x"}}],
        "litellm_settings": {"set_verbose": False, "json_logs": False, "turn_off_message_logging": True},
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True,
                             # no key, like the lmops side (no auth); else 1.106 refuses to start
                             "dangerously_permit_weak_or_unset_master_key": True},
    }))
    env = {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    return Server("litellm", [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                              "--num_workers", "1", "--telemetry", "False"],
                  f"http://127.0.0.1:{port}{PATH}", chat_body(False), env=env, log_dir=tmp).start()


@dataclass
class Runs:
    """All rounds of one target in one mode."""

    saturation: list[LoadResult] = field(default_factory=list)
    latency: list[LoadResult] = field(default_factory=list)


def measure(servers: dict[str, Server], rounds: int, seconds: float, connections: int,
            warmup: float, load: str = "wrk") -> dict[str, dict[str, Runs]]:
    """Every mode, every round, every target back to back; the target order rotates per round."""
    run_load = run_python_load if load == "python" else run_wrk
    runs: dict[str, dict[str, Runs]] = {mode: {name: Runs() for name in servers} for mode in ("plain", "stream")}
    names = list(servers)
    for rnd in range(rounds):
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        for mode, per_target in runs.items():
            body = chat_body(mode == "stream")
            for name in order:
                srv = servers[name]
                if warmup:
                    run_load(srv.ready_url, body, connections=connections, seconds=warmup)
                sat = run_load(srv.ready_url, body, connections=connections, seconds=seconds, server=srv)
                lat = run_load(srv.ready_url, body, connections=1, seconds=seconds)
                per_target[name].saturation.append(sat)
                per_target[name].latency.append(lat)
                print(f"round {rnd + 1} {mode:6} {name:8} {sat.rps:8.0f} req/s  "
                      f"cpu {sat.cpu_ms_per_request or 0:.3f} ms/req  c=1 p50 {lat.p50_ms:.3f} ms "
                      f"p99 {lat.p99_ms:.3f} ms  errors {sat.errors + lat.errors}", file=sys.stderr, flush=True)
    return runs


def added(runs: Runs, base: Runs, attr: str) -> float:
    """Median over rounds of (target - upstream) latency, each pair from the same round."""
    pairs = zip(runs.latency, base.latency, strict=True)
    return statistics.median(getattr(a, attr) - getattr(b, attr) for a, b in pairs)


def upstream_of(target: str) -> str:
    """The upstream a target fronts (an upstream: itself)."""
    return "ref-upstream" if target in ("lmops-ref", "ref-upstream") else "upstream"


def report(runs: dict[str, dict[str, Runs]], connections: int) -> str:
    lines = []
    for mode, per_target in runs.items():
        lines += [f"\n### {mode} chat completions", "",
                  f"| target | req/s at c={connections} | CPU ms/req (server) | p50 ms c=1 | p99 ms c=1 "
                  "| added p50 ms | added p99 ms | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in per_target.items():
            base = per_target[upstream_of(name)]
            sat, lat = median_result(r.saturation), median_result(r.latency)
            add50 = "-" if r is base else f"{added(r, base, 'p50_ms'):+.3f}"
            add99 = "-" if r is base else f"{added(r, base, 'p99_ms'):+.3f}"
            cpu = f"{sat.cpu_ms_per_request:.3f}" if sat.cpu_ms_per_request is not None else "-"
            lines.append(f"| {name} | {sat.rps:.0f} | {cpu} | {lat.p50_ms:.3f} | {lat.p99_ms:.3f} "
                         f"| {add50} | {add99} | {sat.errors + lat.errors} |")
        lines.append("")
        lines += [line for line in (_ratio_line(per_target, name)
                                    for name in ("lmops", "lmops-base", "lmops-ref", "floor")) if line]
        if "lmops-base" in per_target:
            pairs = list(zip(per_target["lmops"].saturation, per_target["lmops-base"].saturation, strict=True))
            ratios = ", ".join(f"{a.rps / b.rps:.2f}" for a, b in pairs)
            cpu = ", ".join(f"{a.cpu_ms_per_request or 0:.3f}/{b.cpu_ms_per_request or 0:.3f}" for a, b in pairs)
            lines.append(f"- lmops / lmops-base req/s per round: {ratios}; CPU ms/req (lmops/base) per round: {cpu}")
        if "litellm" in per_target:
            lm, ll = median_result(per_target["lmops"].saturation), median_result(per_target["litellm"].saturation)
            lines.append(f"- lmops / LiteLLM req/s: {lm.rps / ll.rps:.1f}x (target >= 20x)")
        for name in ("lmops", "lmops-ref"):
            if name in per_target:
                r, base = per_target[name], per_target[upstream_of(name)]
                lines.append(f"- {name} added latency at c=1: p50 {added(r, base, 'p50_ms'):+.3f} ms (target <= 1), "
                             f"p99 {added(r, base, 'p99_ms'):+.3f} ms (target <= 3)")
    return "\n".join(lines)


def _ratio_line(per_target: dict[str, Runs], name: str) -> str | None:
    """``name``'s requests/s over its upstream's: the median ratio, and each round's (both from the same round)."""
    if name not in per_target:
        return None
    upstream = upstream_of(name)
    runs, base = per_target[name].saturation, per_target[upstream].saturation
    rounds = [a.rps / b.rps for a, b in zip(runs, base, strict=True)]
    what = "(a bare proxy on lmops's stack)" if name == "floor" else "(target >= 0.50)"
    return (f"- {name} / {upstream} req/s: {median_result(runs).rps / median_result(base).rps:.2f} {what}; "
            f"per round {', '.join(f'{x:.2f}' for x in rounds)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm", help="the LiteLLM proxy executable")
    p.add_argument("--no-litellm", action="store_true", help="measure only the upstream and lmops")
    p.add_argument("--floor", action="store_true",
                   help="also measure bench/floor_proxy.py: a bare proxy on lmops's stack")
    p.add_argument("--reference", action="store_true",
                   help="also measure a FastAPI + pydantic upstream (bench/reference_upstream.py) and lmops before it")
    p.add_argument("--baseline", type=Path, metavar="SRC",
                   help="also run lmops from this src folder (another checkout) as lmops-base, side by side")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    p.add_argument("--seconds", type=float, default=5, help="duration of each wrk run")
    p.add_argument("--warmup", type=float, default=1, help="seconds of load before each measured run")
    p.add_argument("--connections", type=int, default=32, help="connections for the saturation runs")
    p.add_argument("--json", type=Path, help="also write every run as JSON here")
    p.add_argument("--load", choices=("wrk", "python"), default="wrk",
                   help="load generator: wrk (C), or a Python asyncio client (about a core of its own)")
    a = p.parse_args()
    stop_children_on_sigterm()
    if a.load == "wrk" and not wrk_available():
        sys.exit("wrk is needed as the load generator: apt-get install wrk")

    with tempfile.TemporaryDirectory(prefix="lmops-bench-") as tmpdir:
        tmp = Path(tmpdir)
        servers: dict[str, Server] = {}
        try:
            servers["upstream"] = start_upstream(tmp)
            upstream = servers["upstream"].ready_url.removesuffix("/chat/completions")
            servers["lmops"] = start_lmops(tmp, upstream)
            if a.floor:
                servers["floor"] = start_floor(tmp, upstream)
            if a.baseline:
                servers["lmops-base"] = start_lmops(tmp, upstream, "lmops-base", a.baseline.resolve())
            if a.reference:
                servers["ref-upstream"] = start_reference_upstream(tmp)
                reference = servers["ref-upstream"].ready_url.removesuffix("/chat/completions")
                servers["lmops-ref"] = start_lmops(tmp, reference, "lmops-ref")
            if not a.no_litellm:
                servers["litellm"] = start_litellm(tmp, upstream, a.litellm)
            runs = measure(servers, a.rounds, a.seconds, a.connections, a.warmup, a.load)
        finally:
            for srv in reversed(servers.values()):
                srv.stop()
    print(f"machine: {machine_line()}")
    print(f"command: {' '.join(['bench/gateway_overhead.py', *sys.argv[1:]])}")
    print(report(runs, a.connections))
    if a.json:
        a.json.write_text(json.dumps({mode: {name: asdict(r) for name, r in per.items()}
                                      for mode, per in runs.items()}, indent=1))


if __name__ == "__main__":
    main()
