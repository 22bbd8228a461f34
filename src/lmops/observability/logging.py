"""JSON logs, one object per line, carrying the request id of the request being served."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time
from typing import Any, TextIO

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("lmops_request_id", default=None)
# What the code serving a request adds to its log line (model, tokens...); None outside an HTTP request.
request_fields_var: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("lmops_request_fields",
                                                                                           default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once per second, not once per line
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines logged during a short interval together.

    A serving process logs a line per request; written one at a time, that is a ``write()`` system call
    per request (a tenth of the gateway's CPU per proxied request). On an event loop, lines wait at most
    ``interval`` seconds and leave in one write; a line of level WARNING or above, one logged where no
    loop runs (another thread, the CLI), and the process's exit (``logging.shutdown``) write everything
    held at once, in order. What a killed process loses is at most ``interval`` of INFO lines.
    """

    def __init__(self, stream: TextIO, interval: float = 0.05, max_lines: int = 512):
        super().__init__(stream)
        self.interval = interval
        self.max_lines = max_lines
        self._held: list[str] = []
        # The loop a flush is scheduled on, and its thread. Asking for the running loop costs a getpid() system
        # call (CPython checks for a fork), as much as the rest of a line: a line logged in the loop's own
        # thread while that loop runs is known to be on it.
        self._flush_on: asyncio.AbstractEventLoop | None = None
        self._flush_thread = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._held.append(self.format(record))
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self._held) >= self.max_lines:
            self.flush()
            return
        pending = self._flush_on
        if pending is not None and self._flush_thread == threading.get_ident() and pending.is_running():
            return  # the flush already scheduled on this thread's running loop takes this line too
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._flush_on is not loop:
            self._flush_on, self._flush_thread = loop, threading.get_ident()
            loop.call_later(self.interval, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.acquire()
        try:
            self._flush_on = None
            self.flush()
        finally:
            self.release()

    def flush(self) -> None:
        """Write the held lines (callers hold the handler's lock, as ``logging`` does)."""
        if self._held:
            text = "\n".join(self._held)
            self._held.clear()
            try:
                self.stream.write(text + self.terminator)
            except Exception:  # noqa: BLE001 - a closed or broken stream must not break the caller
                return
        super().flush()


def configure_logging(level: str = "info", json_logs: bool = True) -> None:
    """Log lines of the ``lmops`` loggers to stderr (for the serving process; there is one request line per request).

    The records' caller, thread and process fields are not collected: no format here shows them,
    and looking up the caller's frame is the most expensive part of a log call (Python's logging
    HOWTO, "Optimization").
    """
    logging._srcfile = None  # type: ignore[attr-defined]  # the documented switch to skip findCaller()
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BufferedStreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("lmops")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
