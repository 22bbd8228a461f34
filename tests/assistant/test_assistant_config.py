"""The assistant's configuration: served when both its models are set; misnamed models are located errors."""

from __future__ import annotations

import pytest

from lmops.config import ConfigError, load_settings

MODELS = [{"name": "fn", "engine": "openai", "replicas": ["http://127.0.0.1:9/v1"]},
          {"name": "writer", "engine": "openai", "replicas": ["http://127.0.0.1:9/v1"]}]


def problems(**assistant: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(None, models=MODELS, assistant=assistant)
    return [f"{p.location}: {p.message}" for p in info.value.problems]


def test_the_assistant_is_served_when_both_models_are_set():
    settings = load_settings(None, models=MODELS)
    assert not settings.assistant.enabled and settings.assistant.name == "assistant"
    cfg = load_settings(None, models=MODELS, assistant={"function_model": "fn", "default_model": "writer"}).assistant
    assert cfg.enabled and (cfg.reasks, cfg.detect_tokens) == (2, 8)


def test_configuration_mistakes_are_named():
    assert problems(function_model="fun", default_model="writer") == [
        "assistant.function_model: no model is called 'fun' (declared: fn, writer)"]
    assert problems(function_model="fn") == [
        "assistant.default_model: the assistant needs both function_model and default_model"]
    assert problems(function_model="fn", default_model="writer", name="writer") == [
        "assistant.name: 'writer' is already a model's name"]
    with pytest.raises(ConfigError):
        load_settings(None, models=MODELS, assistant={"function_model": "fn", "default_model": "writer",
                                                      "detect_tokens": 0})
