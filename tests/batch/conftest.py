"""Fixtures for the batch tests: a fake OpenAI engine, lmops with batch settings, an openai client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from lmops.app import create_app
from lmops.testing.fake_openai import FakeOpenAI

from batch_helpers import FAST_BATCH, wait_for


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
