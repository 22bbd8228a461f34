"""A client that goes away in the middle of its request body (fewer bytes than its content-length) is a client
disconnect: one request line with nginx's 499 "client closed request", no traceback, no error logged, no 500
attempted, and nothing left behind (an upload's partial file is removed).

Driven with a raw socket: headers with ``content-length: 1000``, 10 bytes of body, then close.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmops.app import create_app
from lmops.testing.fake_openai import FakeOpenAI


@pytest.fixture
def gateway(serve, settings_factory, tmp_path, monkeypatch):
    """A gateway with access control (an admin route to call) and batch files, in front of a fake upstream."""
    key = f"lmops-{secrets.token_hex(4)}-{secrets.token_urlsafe(32)}"
    monkeypatch.setenv("LMOPS_ADMIN_KEY", key)
    up = serve(FakeOpenAI())
    settings = settings_factory([{"name": "m", "engine": "openai", "replicas": [f"{up.url}/v1"]}],
                                access={"enabled": True}, batch={"data_dir": str(tmp_path / "data")})
    return serve(create_app(settings)), key


@pytest.fixture
def log_records() -> Iterator[list[logging.LogRecord]]:
    """Every record logged while the test runs: lmops's, uvicorn's (where an ASGI app's traceback goes), and any
    other logger's that reaches the root."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if all(r is not record for r in records):
                records.append(record)

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("lmops", "uvicorn", "")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    loggers[0].setLevel(logging.INFO)
    yield records
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def _send_part_and_close(port: int, path: str, content_type: str, key: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n"
                     f"content-type: {content_type}\r\ncontent-length: 1000\r\n\r\n".encode())
        conn.sendall(b'--B\r\ncont' if content_type.startswith("multipart") else b'{"model": ')
        time.sleep(0.1)  # the server has the headers and the bytes: it is reading the rest of the body


def _request_line(records: list[logging.LogRecord], path: str) -> logging.LogRecord:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [r for r in records if r.getMessage() == "request finished" and getattr(r, "path", None) == path]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no request line for {path}: {[r.getMessage() for r in records]}")


@pytest.mark.parametrize("path,content_type", [
    ("/v1/chat/completions", "application/json"),  # an inference route (served by api/direct.py)
    ("/admin/teams", "application/json"),  # an admin JSON route (FastAPI's router)
    ("/v1/files", "multipart/form-data; boundary=B"),  # an upload, streamed to disk
])
def test_a_body_cut_short_is_a_client_disconnect(gateway, log_records, tmp_path: Path, path, content_type):
    srv, key = gateway
    _send_part_and_close(srv.port, path, content_type, key)
    line = _request_line(log_records, path)
    assert line.status == 499 and line.levelno == logging.INFO  # type: ignore[attr-defined]
    time.sleep(0.2)  # anything logged after the line (a failed send, a task's exception) is caught too
    loud = [(r.name, r.levelname, r.getMessage()) for r in log_records if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == []
    files = tmp_path / "data" / "files"
    assert not files.exists() or list(files.iterdir()) == []  # the upload's partial file is gone
