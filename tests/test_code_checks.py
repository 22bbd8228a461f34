"""The source passes its static checks: ``mypy src`` and ``ruff check`` find nothing.

A type error or an unused name is found here rather than by a user. The checks' settings are in
pyproject.toml, and their versions (mypy, the stubs, ruff) are pinned in the dev extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_mypy_finds_no_errors_in_src():
    result = _run("mypy", "src")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout


def test_ruff_finds_nothing_in_the_code_tests_or_benchmarks():
    result = _run("ruff", "check", "--no-cache", "src", "tests", "bench")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
