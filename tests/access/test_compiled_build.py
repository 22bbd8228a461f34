"""The access request path's two builds: compiled by mypyc at install (setup.py), and its pure-Python source.

CI runs the whole suite on the compiled build; here the access tests run again on the source build, and the
choice between the two (an edited source must never run its old compiled code) is checked on real files.
"""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmops
from lmops.compiled import COMPILED, MODULES, SOURCE, STALE, build_state

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
EXT = importlib.machinery.EXTENSION_SUFFIXES[0]


def _write(path: Path, mtime: float) -> None:
    path.write_text("x = 1\n")
    os.utime(path, (mtime, mtime))


def test_build_state_compares_each_build_with_its_source(tmp_path):
    for name in ("a", "b"):
        _write(tmp_path / f"{name}.py", 1000)
    assert build_state(tmp_path, ["a", "b"]) == SOURCE
    _write(tmp_path / f"a{EXT}", 2000)
    assert build_state(tmp_path, ["a", "b"]) == STALE  # b has no build: all or none
    _write(tmp_path / f"b{EXT}", 2000)
    assert build_state(tmp_path, ["a", "b"]) == COMPILED
    _write(tmp_path / "b.py", 3000)  # b edited after the build
    assert build_state(tmp_path, ["a", "b"]) == STALE
    # installed from a wheel: pip may write a source after its build, and nobody edits it there
    assert build_state(tmp_path, ["a", "b"], checkout=False) == COMPILED


def _imported_files(env: dict[str, str]) -> list[str]:
    code = ("import lmops, importlib; print(lmops.BUILD); "
            f"[print(importlib.import_module('lmops.' + m.replace('/', '.')).__file__) for m in {MODULES!r}]")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_pure_python_is_chosen_on_request():
    build, *files = _imported_files({**os.environ, "LMOPS_PURE_PYTHON": "1"})
    assert build == SOURCE
    assert [Path(f).name for f in files] == [f"{Path(m).name}.py" for m in MODULES]


def test_ci_runs_the_compiled_build():
    """The install compiles the access modules wherever a C compiler and Python's headers exist, as on CI."""
    if lmops.BUILD != COMPILED:
        if os.environ.get("CI") == "true":
            pytest.fail("the access modules are not compiled: see `pip install -e .`'s output (mypyc)")
        pytest.skip("the access modules are not compiled on this machine (no mypyc build)")
    build, *files = _imported_files(dict(os.environ))
    assert build == COMPILED and all(f.endswith(EXT) for f in files)


def test_access_tests_pass_on_the_source_build_too():
    if lmops.BUILD != COMPILED:
        pytest.skip("this run already uses the source build")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE),
         f"--ignore={Path(__file__)}"],
        cwd=ROOT, env={**os.environ, "LMOPS_PURE_PYTHON": "1"}, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
