"""A bench run's results: the summary (JSON), its tables (rich, CSV, HTML), charts (PNG) and comparisons.

Files in the output folder: ``requests.jsonl`` (written as requests finish), ``summary.json``, ``levels.csv``,
``bands.csv``, ``throughput.png``, ``bands.png``, ``latency.png`` and ``report.html`` (self-contained: its charts
are inlined). Charts need matplotlib (``pip install 'lmops[reports]'``); without it the rest is written.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lmops.bench.metrics import BANDS, QUANTILES, BandStats, LevelStats

CHARTS = ("throughput.png", "bands.png", "latency.png")
CLIENT_BUSY = 0.9  # the client's CPU use (cores) above which a level's figures may be its own limit
MATPLOTLIB_MISSING = "charts need matplotlib, which is not installed: pip install 'lmops[reports]'"


class ReportError(ValueError):
    """A summary file that cannot be read (compare)."""


def summary(meta: dict[str, Any], levels: list[LevelStats], bands: list[BandStats]) -> dict[str, Any]:
    return {"lmops_bench": 1, **meta, "levels": [asdict(x) for x in levels], "bands": [asdict(b) for b in bands]}


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.1f}"


def _levels_in_order(s: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for row in s["levels"]:
        if row["level"] not in seen:
            seen.append(row["level"])
    return seen


def _targets(s: dict[str, Any]) -> list[str]:
    return [t["name"] for t in s["targets"]]


def band_rows(s: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The engine study's first table: mean output tokens/s per request, by output-length band (rows: targets)."""
    cells = {(b["target"], b["band"]): b for b in s["bands"]}
    head = ["target", *(f"{name} tokens" for name, _, _ in BANDS)]
    rows = []
    for t in _targets(s):
        row = [t]
        for name, _, _ in BANDS:
            b = cells.get((t, name))
            row.append("-" if not b or b["mean_tok_per_s"] is None else
                       f"{b['mean_tok_per_s']:,.1f} (n={b['requests']})")
        rows.append(row)
    return head, rows


def throughput_rows(s: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The engine study's second table: total output tokens/s at each level (rows: levels, columns: targets)."""
    cells = {(x["target"], x["level"]): x for x in s["levels"]}
    head = ["batch size" if s.get("mode") == "concurrency" else "level", *_targets(s)]
    rows = []
    for level in _levels_in_order(s):
        row = [level.removeprefix("c=") if s.get("mode") == "concurrency" else level]
        for t in _targets(s):
            x = cells.get((t, level))
            row.append("-" if x is None else _fmt(x["output_tok_per_s"]))
        rows.append(row)
    return head, rows


def detail_rows(s: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per target and level: throughput, goodput, latency percentiles (ms) and errors by kind."""
    head = ["target", "level", "done", "req/s", "out tok/s", "goodput req/s",
            *(f"TTFT p{q}" for q in QUANTILES), *(f"TPOT p{q}" for q in QUANTILES), "ITL p99", "E2E p99", "errors"]
    rows = []
    for x in s["levels"]:
        lat = x["latency"]
        errors = ", ".join(f"{k} {v}" for k, v in sorted(x["errors"].items())) or "-"
        rows.append([x["target"], x["level"], f"{x['completed']}/{x['requests']}", _fmt(x["req_per_s"]),
                     _fmt(x["output_tok_per_s"]), _fmt(x["goodput_req_per_s"]),
                     *(_ms(lat["ttft"][f"p{q}"]) for q in QUANTILES), *(_ms(lat["tpot"][f"p{q}"]) for q in QUANTILES),
                     _ms(lat["itl"]["p99"]), _ms(lat["e2e"]["p99"]), errors])
    return head, rows


def _print(console: Console, title: str, head: list[str], rows: list[list[str]]) -> None:
    table = Table(*head)
    for row in rows:
        table.add_row(*row)
    console.print(f"[bold]{escape(title)}[/]", soft_wrap=True)  # above the table: a title in it wraps to its width
    console.print(table)


def tables(s: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    slo = ", ".join(f"{k}≤{v * 1000:g}ms" for k, v in (s.get("slo") or {}).items()) or "none"
    return [("Output tokens/s per request, by output length (the speed each user saw, queueing included)",
             *band_rows(s)),
            ("Total output tokens/s by batch size (concurrency)" if s.get("mode") == "concurrency"
             else "Total output tokens/s by request rate", *throughput_rows(s)),
            (f"Per level (latencies in ms; goodput SLO: {slo})", *detail_rows(s))]


def print_summary(s: dict[str, Any], console: Console) -> None:
    for title, head, rows in tables(s):
        _print(console, title, head, rows)
    tokens_from = {f for x in s["levels"] for f in x["tokens_from"]}
    if "chunks" in tokens_from:
        console.print("[yellow]some targets sent no usage: their output tokens are counted as streamed chunks[/]")
    busy = sorted({x["level"] for x in s["levels"] if x.get("client_cpu", 0) >= CLIENT_BUSY})
    if busy:
        console.print(f"[yellow]the bench client used most of a core at {', '.join(busy)}: there, the figures may "
                      "be the client's limit, not the target's[/]")


def write_json(s: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(s, indent=1) + "\n")


def write_csv(s: dict[str, Any], out: Path) -> None:
    """levels.csv (one row per target and level, latencies in seconds) and bands.csv."""
    with (out / "levels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        lat_cols = [(k, q) for k in ("ttft", "ttst", "tpot", "itl", "e2e") for q in ("p50", "p90", "p99", "mean")]
        w.writerow(["target", "level", "value", "seconds", "requests", "completed", "req_per_s", "output_tok_per_s",
                    "goodput_req_per_s", "goodput_fraction", "mean_output_tokens", "tokens_from", "client_cpu",
                    "errors", *(f"{k}_{q}_s" for k, q in lat_cols)])
        for x in s["levels"]:
            w.writerow([x["target"], x["level"], x["value"], x["seconds"], x["requests"], x["completed"],
                        x["req_per_s"], x["output_tok_per_s"], x["goodput_req_per_s"], x["goodput_fraction"],
                        x["mean_output_tokens"], "+".join(x["tokens_from"]), x["client_cpu"],
                        ";".join(f"{k}={v}" for k, v in sorted(x["errors"].items())),
                        *(x["latency"][k][q] for k, q in lat_cols)])
    with (out / "bands.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "band", "requests", "mean_tok_per_s", "p50_tok_per_s"])
        for b in s["bands"]:
            w.writerow([b["target"], b["band"], b["requests"], b["mean_tok_per_s"], b["p50_tok_per_s"]])


def write_charts(s: dict[str, Any], out: Path) -> list[Path]:
    """throughput.png, bands.png and latency.png; ImportError (MATPLOTLIB_MISSING) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(MATPLOTLIB_MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets, levels = _targets(s), _levels_in_order(s)
    cells = {(x["target"], x["level"]): x for x in s["levels"]}
    xs = list(range(len(levels)))
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(7, 4))
    for t in targets:
        ax.plot(xs, [cells[(t, lv)]["output_tok_per_s"] if (t, lv) in cells else float("nan") for lv in levels],
                marker="o", label=t)
    ax.set(xticks=xs, xticklabels=levels, xlabel="level", ylabel="output tokens/s (all requests)",
           title="Throughput by batch size")
    ax.legend()
    save(fig, "throughput.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    band_cells = {(b["target"], b["band"]): b["mean_tok_per_s"] or 0.0 for b in s["bands"]}
    width = 0.8 / max(len(targets), 1)
    for k, t in enumerate(targets):
        ax.bar([i + k * width for i in range(len(BANDS))], [band_cells.get((t, name), 0.0) for name, _, _ in BANDS],
               width, label=t)
    ax.set(xticks=[i + width * (len(targets) - 1) / 2 for i in range(len(BANDS))],
           xticklabels=[f"{name} tokens" for name, _, _ in BANDS], ylabel="output tokens/s per request (mean)",
           title="Speed by output length")
    ax.legend()
    save(fig, "bands.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, t in enumerate(targets):
        for q, style in (("p50", "-"), ("p99", "--")):
            ys = [(cells[(t, lv)]["latency"]["ttft"][q] or float("nan")) * 1000 if (t, lv) in cells else float("nan")
                  for lv in levels]
            ax.plot(xs, ys, style, color=f"C{k}", marker="o", label=f"{t} TTFT {q}")
    ax.set(xticks=xs, xticklabels=levels, xlabel="level", ylabel="ms", title="Time to first token")
    ax.legend()
    save(fig, "latency.png")
    return written


def write_html(s: dict[str, Any], out: Path, charts: list[Path]) -> Path:
    """report.html: the tables and the charts (inlined as data URIs), readable with no other file."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lmops bench</title><style>"
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th{background:#f3f3f3}"
             "td:first-child{text-align:left}</style></head><body><h1>lmops bench</h1>"]
    targets = ", ".join(f"{t['name']}: {t['url']} ({t['model']})" for t in s["targets"])
    parts.append(f"<p>{html.escape(s.get('started', ''))} · {html.escape(s.get('mode', ''))} · "
                 f"{html.escape(targets)}{' · <b>interrupted</b>' if s.get('interrupted') else ''}</p>")
    for title, head, rows in tables(s):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
                     + "</table>")
    for path in charts:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<p><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'></p>")
    if not charts:
        parts.append(f"<p>No charts: {html.escape(MATPLOTLIB_MISSING)}</p>")
    parts.append("</body></html>\n")
    path = out / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path


def load_summary(path: str | Path) -> dict[str, Any]:
    try:
        s = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(s, dict) or s.get("lmops_bench") != 1:
        raise ReportError(f"{path} is not an lmops bench summary.json")
    return s


COMPARED = (("req/s", "req_per_s", None), ("out tok/s", "output_tok_per_s", None),
            ("goodput req/s", "goodput_req_per_s", None), ("TTFT p50", "latency", ("ttft", "p50")),
            ("TPOT p50", "latency", ("tpot", "p50")), ("E2E p99", "latency", ("e2e", "p99")))


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """B ÷ A for each (target, level) both ran; when each ran one target under different names, by level."""
    def keyed(s: dict[str, Any], by_level: bool) -> dict[tuple[str, str], dict[str, Any]]:
        return {("" if by_level else x["target"], x["level"]): x for x in s["levels"]}

    by_level = (not set(_targets(a)) & set(_targets(b))) and len(_targets(a)) == len(_targets(b)) == 1
    ka, kb = keyed(a, by_level), keyed(b, by_level)
    head = ["target", "level", *(f"{name} B÷A" for name, _, _ in COMPARED)]
    rows = []
    for key in [k for k in ka if k in kb]:
        row = [key[0] or f"{_targets(a)[0]} → {_targets(b)[0]}", key[1]]
        for _, field_name, sub in COMPARED:
            va, vb = (ka[key][field_name], kb[key][field_name]) if sub is None else \
                (ka[key]["latency"][sub[0]][sub[1]], kb[key]["latency"][sub[0]][sub[1]])
            row.append(f"{vb / va:.2f}×" if va and vb is not None else "-")
        rows.append(row)
    return head, rows


def print_compare(a: dict[str, Any], b: dict[str, Any], console: Console) -> int:
    """Print the ratio table; returns how many rows it has (0: the runs share no level)."""
    head, rows = compare_rows(a, b)
    _print(console, "B ÷ A (above 1: B is higher; for latencies lower is better)", head, rows)
    return len(rows)
