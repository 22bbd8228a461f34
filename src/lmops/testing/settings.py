"""Settings for tests and benchmarks: their own SQLite file, quick health checks and flushes."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from lmops.config import Settings, load_settings

SECRET_FILE = "test.secret"


def make_settings(tmp_path: Path, models: list[dict[str, Any]] | None = None, **overrides: Any) -> Settings:
    """Settings for a test: its own SQLite file, fast health checks, the given models (default: embedded).

    On another database (PostgreSQL), where lmops makes no key-hashing secret up, the secret is a file in
    ``tmp_path`` (made once: settings made again for the same folder share it), unless the test names one.
    """
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
    if not str(data["database_url"]).startswith("sqlite") and "secret_file" not in data["access"]:
        data["access"] = {**data["access"], "secret_file": str(secret_file_in(tmp_path))}
    return load_settings(None, **data)


def secret_file_in(folder: Path) -> Path:
    """A key-hashing secret file in ``folder``, created on first use."""
    path = folder / SECRET_FILE
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path
