"""Helpers shared by the batch tests (a module of its own: ``conftest`` is not importable by name)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

FAST_BATCH = {"poll_seconds": 0.05, "ack_interval": 0.02, "backoff_base": 0.05, "backoff_max": 0.2,
              "heartbeat_seconds": 0.5, "lease_seconds": 5, "metrics_interval": 0.2,
              "shutdown_grace": 1}


def worker_config(tmp_path: Path, pg_url: str, upstream: str, batch: dict[str, Any], **settings: Any) -> Path:
    """A config file on PostgreSQL for gateways and out-of-process workers, with one model ``fake`` at ``upstream``
    (the fake server's URL), access control off and quiet logs; ``batch`` adds to ``FAST_BATCH``."""
    cfg = {"database_url": pg_url, "access": {"enabled": False},
           "models": [{"name": "fake", "engine": "openai", "replicas": [f"{upstream}/v1"]}],
           "server": {"log_level": "warning"}, "batch": {**FAST_BATCH, "worker_in_process": False, **batch},
           **settings}
    config = tmp_path / "lmops.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last value {value!r}")
        time.sleep(interval)
