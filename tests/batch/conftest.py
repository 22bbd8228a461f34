"""Fixtures for the batch tests: a fake OpenAI engine, lmops with batch settings, an openai client."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from lmops.app import create_app
from lmops.testing.fake_openai import FakeOpenAI

FAST_BATCH = {"poll_seconds": 0.05, "ack_interval": 0.02, "backoff_base": 0.05, "backoff_max": 0.2,
              "heartbeat_seconds": 0.5, "lease_seconds": 5, "metrics_interval": 0.2,
              "shutdown_grace": 1}


@pytest.fixture
def fake(serve):
    engine = FakeOpenAI()
    srv = serve(engine)
    srv.engine = engine
    return srv


@pytest.fixture
def batch_settings(tmp_path, fake, settings_factory) -> Callable[..., Any]:
    def make(database_url: str | None = None, **batch: Any):
        overrides: dict[str, Any] = {"batch": {"data_dir": str(tmp_path / "data"), **FAST_BATCH, **batch}}
        if database_url:
            overrides["database_url"] = database_url
        return settings_factory([{"name": "fake", "engine": "openai", "replicas": [f"{fake.url}/v1"]}], **overrides)

    return make


@pytest.fixture
def lmops_server(serve, batch_settings):
    def start(**kwargs: Any):
        return serve(create_app(batch_settings(**kwargs)))

    return start


@pytest.fixture
def client(lmops_server) -> openai.OpenAI:
    srv = lmops_server()
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def wait():
    return wait_for


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last value {value!r}")
        time.sleep(interval)
