"""``lmops bench`` as a real process: Ctrl-C keeps what was measured; bad input is a readable usage error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmops.testing.fake_openai import Behaviour, FakeOpenAI
from lmops.testing.server import ServerThread

LMOPS = [sys.executable, "-m", "lmops", "bench"]


def test_ctrl_c_keeps_what_was_measured(tmp_path: Path):
    out = tmp_path / "run"
    with ServerThread(FakeOpenAI(Behaviour(words=10, chunk_delay=0.01))) as srv:
        proc = subprocess.Popen([*LMOPS, "-t", f"a={srv.url}", "-t", f"b={srv.url}", "--concurrency", "2",
                                 "--requests", "100000", "--duration", "600", "--out", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COLUMNS": "200"})
        try:
            deadline = time.monotonic() + 60
            while not ((out / "requests.jsonl").exists() and (out / "requests.jsonl").stat().st_size > 0):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: kept the" in stderr
    recs = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] is True
    assert sum(x["requests"] for x in s["levels"]) == len(recs) > 0
    assert [x["level"] for x in s["levels"]] == ["c=2"]
    assert (out / "report.html").read_text().endswith("</html>\n") and (out / "levels.csv").exists()
    assert "Total output tokens/s by batch size" in stdout


@pytest.mark.parametrize(("args", "says"), [
    (["-t", "a=ftp://127.0.0.1:9"], "must start with http:// or https://"),
    (["-t", "http://127.0.0.1:9", "--slo", "ttft=soon"], "the time is a number with ms or s"),
    (["-t", "http://127.0.0.1:9", "--dataset", "/nonexistent/prompts.jsonl"], "cannot read dataset"),
    (["-t", "http://127.0.0.1:9", "--concurrency", "1,zero"], "positive integers"),
    ([], "name at least one target"),
])
def test_bad_input_is_a_usage_error(args, says, tmp_path: Path):
    result = subprocess.run([*LMOPS, *args, "--out", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_a_bad_dataset_line_is_named(tmp_path: Path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "fine"}\n{"prompt": 3}\n')
    result = subprocess.run([*LMOPS, "-t", "http://127.0.0.1:9", "--dataset", str(data)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 2 and "d.jsonl, line 2" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_target_is_a_runtime_error_without_a_traceback(tmp_path: Path):
    from lmops.testing.server import free_port

    result = subprocess.run([*LMOPS, "-t", f"a=http://127.0.0.1:{free_port()}", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 1 and "target a: cannot reach" in result.stderr
    assert "Traceback" not in result.stderr
