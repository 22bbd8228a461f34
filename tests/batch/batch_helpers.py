"""Helpers shared by the batch tests (a module of its own: ``conftest`` is not importable by name)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

FAST_BATCH = {"poll_seconds": 0.05, "ack_interval": 0.02, "backoff_base": 0.05, "backoff_max": 0.2,
              "heartbeat_seconds": 0.5, "lease_seconds": 5, "metrics_interval": 0.2,
              "shutdown_grace": 1}


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last value {value!r}")
        time.sleep(interval)
