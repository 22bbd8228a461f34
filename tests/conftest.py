"""Shared fixtures: settings, real servers on real sockets, PostgreSQL and Redis databases.

Tests that need a service skip when it is absent, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmops.app import create_app
from lmops.config import Settings
from lmops.testing.server import ServerThread
from lmops.testing.settings import make_settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("LMOPS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LMOPS_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A gateway serving the embedded SmolLM2 as ``smollm2`` (one per test module: the model loads in ~0.2 s).

    One slot (``parallel: 1``): the batched engine, one generation at a time, so that queue tests can count
    (tests/test_embedded_batching.py runs several slots)."""
    settings = make_settings(tmp_path_factory.mktemp("embedded"),
                             [{"name": "smollm2", "engine": "embedded", "context_length": 1024, "queue_size": 2,
                               "parallel": 1}])
    srv = ServerThread(create_app(settings)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def direct_llama() -> Any:
    """llama-cpp-python used directly on the same GGUF: the reference answers must match."""
    from llama_cpp import Llama

    from lmops.engines.bundled_model import default_model_path

    return Llama(default_model_path(), n_ctx=1024, verbose=False)


def need_service(name: str, reason: str) -> None:
    """Skip (locally) or fail (under CI) when a service is missing."""
    if IN_CI:
        pytest.fail(f"{name} is required under CI: {reason}")
    pytest.skip(f"{name} not available: {reason}")


@pytest.fixture(scope="session")
def require_service():
    """``need_service`` for test modules: ``conftest`` is not importable by name from every test folder."""
    return need_service


@pytest.fixture
def settings_factory(tmp_path: Path):
    def factory(models: list[dict[str, Any]] | None = None, **overrides: Any) -> Settings:
        return make_settings(tmp_path, models, **overrides)

    return factory


@pytest.fixture
def serve():
    """Start lmops (or any ASGI app) on a real socket: ``srv = serve(app)``; stopped after the test."""
    servers: list[ServerThread] = []

    def start(app: Any) -> ServerThread:
        srv = ServerThread(app).start()
        servers.append(srv)
        return srv

    yield start
    for srv in reversed(servers):
        srv.stop()


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    import psycopg

    url = PG_ADMIN_URL
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        need_service("PostgreSQL", f"{url}: {exc}")
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    import psycopg

    name = f"lmops_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        need_service("Redis", f"{REDIS_URL}: {exc}")
    return REDIS_URL
