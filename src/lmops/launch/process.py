"""The engine as a managed subprocess: its own process group, its log lines streamed with a prefix, readiness
polled over HTTP, and a clean stop (SIGTERM to the whole group, a grace period, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from typing import IO, TextIO

import httpx

from lmops.launch.command import EngineCommand

READY_PATH = "/v1/models"  # every engine here answers it 200 once its model is loaded (llama-server: 503 before)


class EngineFailed(RuntimeError):
    """The engine could not start, exited before it was ready, or was not ready in time; ``tail``: its last lines."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail

    def report(self) -> str:
        if not self.tail:
            return f"{self}\n(the engine wrote nothing)"
        return f"{self}; its last log lines:\n" + "\n".join(f"  {line}" for line in self.tail)


class EngineProcess:
    """``with EngineProcess(cmd, url, out=sys.stdout) as p: p.wait_ready(600)``: one engine, stopped on exit."""

    def __init__(self, command: EngineCommand, base_url: str, *, out: TextIO, prefix: str = "engine",
                 tail_lines: int = 30):
        self.command = command
        self.base_url = base_url.rstrip("/")
        self._out = out
        self._prefix = f"[{prefix}] "
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The engine's pid, which is also its process group id."""
        assert self._proc is not None, "not started"
        return self._proc.pid

    def tail(self) -> list[str]:
        return list(self._tail)

    def start(self) -> None:
        try:
            self._proc = subprocess.Popen(
                self.command.argv, env={**os.environ, **self.command.env}, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:  # no such program, not executable
            raise EngineFailed(f"cannot start {self.command.argv[0]!r}: {exc.strerror or exc} (is the engine "
                               "installed? the spec's executable names another program)", []) from None
        assert self._proc.stdout is not None
        self._reader = threading.Thread(target=self._stream, args=(self._proc.stdout,), daemon=True,
                                        name=f"engine-log-{self._proc.pid}")
        self._reader.start()

    def _stream(self, pipe: IO[bytes]) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self._tail.append(line)
            try:
                self._out.write(self._prefix + line + "\n")
                self._out.flush()
            except (OSError, ValueError):  # our own output closed: keep draining the pipe so the engine never blocks
                pass
        pipe.close()

    def returncode(self) -> int | None:
        """None while the engine runs."""
        assert self._proc is not None, "not started"
        return self._proc.poll()

    def wait_ready(self, timeout: float, stop: threading.Event | None = None, interval: float = 0.25) -> bool:
        """Wait until the engine answers GET /v1/models with 200. False when ``stop`` was set first; EngineFailed
        when it exits first or is not ready within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        url = self.base_url + READY_PATH
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if stop is not None and stop.is_set():
                    return False
                code = self.returncode()
                if code is not None:
                    self._drain()
                    raise EngineFailed(f"the engine exited with status {code} before it was ready", self.tail())
                try:
                    if client.get(url).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise EngineFailed(f"the engine was not ready at {url} within {timeout:g} s", self.tail())
                time.sleep(interval)

    def _drain(self, timeout: float = 5.0) -> None:
        """Let the log reader take the engine's last lines (after it exited)."""
        if self._reader is not None:
            self._reader.join(timeout)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a pid reused by someone else's group: not ours any more
            return False
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM to the engine's whole process group; SIGKILL to what is left after ``grace`` seconds.
        Returns the engine's exit status (None if it was never started)."""
        if self._proc is None:
            return None
        self._signal_group(signal.SIGTERM)
        if not self._wait_group_gone(grace):
            self._signal_group(signal.SIGKILL)
            self._wait_group_gone(5.0)  # orphaned helpers are reaped by init a moment after they die
        code = self._proc.wait()
        self._drain()
        return code

    def _wait_group_gone(self, timeout: float) -> bool:
        """True once the engine exited (reaped) and nothing else of its process group is left."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None and not self._group_alive():
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> "EngineProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
