"""``lmops bench`` end to end against fake engines on real sockets: every file it writes, load shapes, compare."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lmops.bench import report
from lmops.bench.prompts import BUILTIN, SHARED_PREFIX
from lmops.cli import app
from lmops.testing.fake_openai import Behaviour, FakeOpenAI
from lmops.testing.server import ServerThread


def bench(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["bench", *args], env={"COLUMNS": "250"})
    return result.exit_code, result.output


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two targets (two fakes), two concurrency levels, a dataset whose answers fall in the three bands."""
    folder = tmp_path_factory.mktemp("study")
    dataset = folder / "prompts.jsonl"
    dataset.write_text('{"prompt": "short", "max_tokens": 10}\n'
                       '{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",'
                       ' "body": {"model": "x", "messages": [{"role": "user", "content": "mid"}], "max_tokens": 100}}\n'
                       '\n{"messages": [{"role": "user", "content": "long"}], "max_tokens": 400}\n')
    fast, slow = FakeOpenAI(Behaviour(words=400)), FakeOpenAI(Behaviour(words=400, delay=0.02))
    with ServerThread(fast) as a, ServerThread(slow) as b:
        code, output = bench("--target", f"a={a.url}", "--target", f"b={b.url}/v1,model=m", "--dataset", str(dataset),
                             "--concurrency", "1,4", "--requests", "8", "--out", str(folder / "out"))
    assert code == 0, output
    # 16 measured requests and one unrecorded warm-up each; a's model: the first it lists
    assert fast.models_seen == {"fake": 17} and slow.models_seen == {"m": 17}
    (folder / "out" / "stdout.txt").write_text(output)
    return folder / "out"


def test_every_request_is_kept_and_targets_alternate_abba_within_each_level(study: Path):
    recs = lines(study / "requests.jsonl")
    assert len(recs) == 2 * 2 * 8 and all(r["error"] is None for r in recs)
    blocks = [(r["level"], r["target"]) for r in recs[::4]]  # 2 rounds of 4 requests per target and level
    assert blocks == [("c=1", "a"), ("c=1", "b"), ("c=1", "b"), ("c=1", "a"),
                      ("c=4", "a"), ("c=4", "b"), ("c=4", "b"), ("c=4", "a")]
    for level in ("c=1", "c=4"):  # the same prompts, in the same order, for each target
        per_target = {t: [r["output_tokens"] for r in sorted(recs, key=lambda r: r["conversation"])
                          if r["target"] == t and r["level"] == level] for t in "ab"}
        assert per_target["a"] == per_target["b"] == [10, 100, 400, 10, 100, 400, 10, 100]
    slow = [r for r in recs if r["target"] == "b"]
    assert min(r["ttft"] for r in slow) >= 0.02 and all(r["tokens_from"] == "usage" for r in recs)


def test_the_summary_holds_both_tables(study: Path):
    s = json.loads((study / "summary.json").read_text())
    assert s["mode"] == "concurrency" and s["interrupted"] is False and s["slo"] == {"ttft": 0.5, "tpot": 0.05}
    assert [(t["name"], t["model"]) for t in s["targets"]] == [("a", "fake"), ("b", "m")]
    assert [(x["target"], x["level"], x["completed"]) for x in s["levels"]] == [
        ("a", "c=1", 8), ("b", "c=1", 8), ("a", "c=4", 8), ("b", "c=4", 8)]
    for x in s["levels"]:
        assert x["output_tok_per_s"] == pytest.approx(x["req_per_s"] * (3 * 10 + 3 * 100 + 2 * 400) / 8)
        assert x["latency"]["ttft"]["p50"] <= x["latency"]["ttft"]["p99"] <= x["latency"]["e2e"]["p99"]
    bands = {(b["target"], b["band"]): b["requests"] for b in s["bands"]}
    assert bands == {("a", "1-30"): 6, ("a", "31-300"): 6, ("a", ">300"): 4,
                     ("b", "1-30"): 6, ("b", "31-300"): 6, (("b", ">300")): 4}
    assert all(0 < x["client_cpu"] < 2 for x in s["levels"])
    printed = (study / "stdout.txt").read_text()
    assert "Output tokens/s per request, by output length" in printed
    assert "Total output tokens/s by batch size" in printed


def test_csv_charts_and_a_self_contained_html_report(study: Path):
    with (study / "levels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["target"], r["level"], r["completed"]) for r in rows] == [
        ("a", "c=1", "8"), ("b", "c=1", "8"), ("a", "c=4", "8"), ("b", "c=4", "8")]
    assert float(rows[0]["ttft_p50_s"]) > 0 and float(rows[0]["output_tok_per_s"]) > 0
    with (study / "bands.csv").open() as f:
        assert [(r["target"], r["band"], r["requests"]) for r in csv.DictReader(f)][:3] == [
            ("a", "1-30", "6"), ("a", "31-300", "6"), ("a", ">300", "4")]
    for name in ("throughput.png", "bands.png", "latency.png"):
        assert (study / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (study / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 3 and "http://" not in page.split("<h2>", 1)[1]
    assert "31-300 tokens" in page and "<td>c=4</td>" in page


def test_a_busy_client_is_pointed_out(study: Path):
    s = json.loads((study / "summary.json").read_text())
    for x in s["levels"]:  # in this test process the fakes' threads count in the client's CPU: set it
        x["client_cpu"] = 0.5
    console = Console(file=io.StringIO(), width=300)
    report.print_summary(s, console)
    assert "the bench client used most of a core" not in console.file.getvalue()
    s["levels"][2]["client_cpu"] = 0.97
    report.print_summary(s, console)
    assert "the bench client used most of a core at c=4" in console.file.getvalue()


def test_compare_prints_b_over_a(study: Path, tmp_path: Path):
    s = json.loads((study / "summary.json").read_text())
    for x in s["levels"]:
        x["output_tok_per_s"] *= 2
    (tmp_path / "b.json").write_text(json.dumps(s))
    code, output = bench("compare", str(study / "summary.json"), str(tmp_path / "b.json"))
    assert code == 0, output
    assert output.count("2.00×") == 4 and output.count("1.00×") >= 4  # out tok/s doubled, req/s the same
    only_b = {**s, "targets": [s["targets"][1]], "levels": [x for x in s["levels"] if x["target"] == "b"]}
    only_a = {**s, "targets": [s["targets"][0]], "levels": [x for x in s["levels"] if x["target"] == "a"]}
    (tmp_path / "a1.json").write_text(json.dumps(only_a))
    (tmp_path / "b1.json").write_text(json.dumps(only_b))
    code, output = bench("compare", str(tmp_path / "a1.json"), str(tmp_path / "b1.json"))
    assert code == 0 and "a → b" in output and "c=4" in output  # one target each: matched by level
    (tmp_path / "junk.json").write_text("{}")
    code, output = bench("compare", str(tmp_path / "junk.json"), str(tmp_path / "b.json"))
    assert code == 2 and "not an lmops bench summary" in output


def test_multi_turn_conversations_share_their_prefix(tmp_path: Path):
    fake = FakeOpenAI(Behaviour(words=5))
    with ServerThread(fake) as srv:
        code, output = bench("-t", srv.url, "--turns", "3", "--requests", "6", "--concurrency", "2", "--rounds", "1",
                             "--out", str(tmp_path))
    assert code == 0, output
    recs = lines(tmp_path / "requests.jsonl")
    assert sorted((r["conversation"], r["turn"]) for r in recs) == [(c, t) for c in (0, 1) for t in range(3)]
    messages = fake.last_body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == SHARED_PREFIX and messages[2]["content"] == "The quick brown fox jumps"


def test_at_a_request_rate_waiting_for_a_free_slot_counts(tmp_path: Path):
    with ServerThread(FakeOpenAI(Behaviour(words=3, delay=0.2))) as srv:
        code, output = bench("-t", srv.url, "--request-rate", "50", "--max-concurrency", "1", "--requests", "5",
                             "--rounds", "1", "--out", str(tmp_path))
    assert code == 0, output
    recs = lines(tmp_path / "requests.jsonl")
    assert len(recs) == 5 and {r["level"] for r in recs} == {"rate=50"}
    assert max(r["queued"] for r in recs) >= 0.5 and max(r["ttft"] for r in recs) >= 0.7  # 4 answers ahead of it
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["mode"] == "rate" and "Total output tokens/s by request rate" in output


def test_a_level_stops_at_its_duration(tmp_path: Path):
    fake = FakeOpenAI(Behaviour(words=3, delay=0.2))
    with ServerThread(fake) as srv:
        code, output = bench("-t", srv.url, "--concurrency", "1", "--requests", "100", "--duration", "0.5",
                             "--rounds", "1", "--warmup", "0", "--out", str(tmp_path))
    assert code == 0, output
    assert 1 <= len(lines(tmp_path / "requests.jsonl")) == fake.requests <= 4


def test_the_builtin_prompts_ask_for_short_medium_and_long_answers():
    limits = {p.kind: p.max_tokens for p in BUILTIN}
    assert limits == {"short": 32, "medium": 256, "long": 1024}
    assert len({p.messages[0]["content"] for p in BUILTIN}) == len(BUILTIN) == 24


def test_a_short_run_against_the_embedded_model_through_lmops(embedded: ServerThread, tmp_path: Path):
    code, output = bench("-t", f"lmops={embedded.url}", "--concurrency", "1,2", "--requests", "2", "--rounds", "1",
                         "--max-tokens", "16", "--temperature", "0", "--out", str(tmp_path))
    assert code == 0, output
    recs = lines(tmp_path / "requests.jsonl")
    assert len(recs) == 4 and all(r["error"] is None for r in recs), recs
    assert all(r["tokens_from"] == "usage" and 1 <= r["output_tokens"] <= 16 and r["prompt_tokens"] > 0 for r in recs)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["targets"][0]["model"] == "smollm2" and [x["completed"] for x in s["levels"]] == [2, 2]
    assert {p.name for p in tmp_path.iterdir()} == {"requests.jsonl", "summary.json", "levels.csv", "bands.csv",
                                                    "throughput.png", "bands.png", "latency.png", "report.html"}


def test_without_matplotlib_everything_but_the_charts_is_written(study: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    from lmops.bench.cli import write_files

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    console = Console(file=io.StringIO(), width=300)
    write_files(json.loads((study / "summary.json").read_text()), tmp_path, console)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bands.csv", "levels.csv", "report.html", "summary.json"]
    assert "charts need matplotlib, which is not installed: pip install 'lmops[reports]'" in console.file.getvalue()
    page = (tmp_path / "report.html").read_text()
    assert "No charts: charts need matplotlib" in page and "data:image/png" not in page
