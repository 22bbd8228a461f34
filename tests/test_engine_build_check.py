"""The embedded engine's startup check: a llama.cpp build that crashes on this CPU is refused, clearly, before the
server serves (engines/llamacpp_check.py says why a build may crash); a working build is checked once."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from lmops.engines.llamacpp_check import (AVX2_CMAKE_ARGS, CACHE_FILE, EngineBuildBroken, ensure_engine_build_works,
                                          pinned_version)
from lmops.testing.server import free_port

# A child standing for a native build on an AMX host: it reports its CPU features as llama.cpp would, then
# crashes as ggml_backend_amx_mul_mat does.
CRASHING_CHILD = [sys.executable, "-c", textwrap.dedent("""\
    import json, os, signal, sys
    print(json.dumps({"system_info": "CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"}), flush=True)
    print("load_tensors:          AMX model buffer size =    64.00 MiB", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)
""")]


def test_the_pinned_version_is_pyprojects():
    assert pinned_version() == "0.3.36"


def test_a_crashing_child_refuses_the_start_with_the_fix(tmp_path):
    with pytest.raises(EngineBuildBroken) as caught:
        ensure_engine_build_works(command=CRASHING_CHILD, cache=tmp_path)
    message = str(caught.value)
    assert "was killed by SIGSEGV (Segmentation fault)" in message
    assert "AMX_INT8 = 1" in message  # the build's features, as llama_print_system_info() gave them
    assert "AMX model buffer size" in message  # the child's last lines
    assert (f'CMAKE_ARGS="{AVX2_CMAKE_ARGS}" {sys.executable} -m pip install --force-reinstall --no-cache-dir '
            "llama-cpp-python==0.3.36") in message
    assert not (tmp_path / CACHE_FILE).exists()  # a failure is not remembered: the next start checks again


def test_a_failing_child_is_refused_too(tmp_path):
    child = [sys.executable, "-c", "raise SystemExit('llama.cpp: cannot load the model')"]
    with pytest.raises(EngineBuildBroken, match=r"failed \(exit status 1\)[\s\S]*cannot load the model"):
        ensure_engine_build_works(command=child, cache=tmp_path)
    silent = [sys.executable, "-c", "pass"]  # exits 0 without having decoded anything
    with pytest.raises(EngineBuildBroken, match="failed"):
        ensure_engine_build_works(command=silent, cache=tmp_path)


def _crashing_lmops(tmp_path, *args: str) -> str:
    env = {**os.environ, "LMOPS_ENGINE_CHECK_COMMAND": shlex.join(CRASHING_CHILD), "LMOPS_CACHE_DIR": str(tmp_path),
           "LMOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-m", "lmops", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "the embedded llama.cpp engine does not work on this machine" in run.stderr
    assert "SIGSEGV" in run.stderr and "-DGGML_NATIVE=OFF" in run.stderr and "AMX_INT8 = 1" in run.stderr
    assert "Traceback" not in run.stderr
    return run.stderr


def test_lmops_serve_refuses_a_crashing_build_without_a_traceback(tmp_path):
    err = _crashing_lmops(tmp_path, "serve", "--port", str(free_port()))
    assert "lmops: cannot start: the embedded llama.cpp engine" in err
    assert not (tmp_path / "x.db").exists()  # refused before anything was done


def test_lmops_chat_in_process_says_so_too(tmp_path):
    _crashing_lmops(tmp_path, "chat", "Hello", "--max-tokens", "4")


def test_the_real_check_passes_on_this_build_and_is_remembered(tmp_path):
    verdict = ensure_engine_build_works(cache=tmp_path)
    assert verdict.ok and verdict.detail == "decoded the bundled model"
    assert "AVX2 = 1" in verdict.system_info  # the Makefile's CMAKE_ARGS
    entries = json.loads((tmp_path / CACHE_FILE).read_text())
    (entry,) = entries.values()
    assert entry["ok"] is True and entry["llama_cpp_python"] == "0.3.36" and "AVX2 = 1" in entry["system_info"]
    # another process (the next start) finds the verdict and runs no child
    code = ("import sys; from pathlib import Path; from lmops.engines.llamacpp_check import ensure_engine_build_works;"
            "print(ensure_engine_build_works(cache=Path(sys.argv[1])).detail)")
    again = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == "checked before", again.stderr
