"""Settings for tests and benchmarks: their own SQLite file, quick health checks and flushes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmops.config import Settings, load_settings


def make_settings(tmp_path: Path, models: list[dict[str, Any]] | None = None, **overrides: Any) -> Settings:
    """Settings for a test: its own SQLite file, fast health checks, the given models (default: embedded)."""
    data: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'lmops.db'}",
        "health": {"interval": 0.2, "timeout": 1.0, "failure_threshold": 1, "cooldown": 0.5},
        "usage": {"flush_interval": 0.05},
        "server": {"log_json": True},
        "access": {"enabled": False},
    }
    if models is not None:
        data["models"] = models
    data.update(overrides)
    return load_settings(None, **data)
