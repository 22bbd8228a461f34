"""Build the engines (one per replica) that a model declaration asks for."""

from __future__ import annotations

from lmops.config import EngineKind, ModelConfig, Settings
from lmops.engines.base import Engine


def build_engines(model: ModelConfig, settings: Settings) -> list[Engine]:
    if model.engine is EngineKind.openai:
        from lmops.engines.openai_http import OpenAIHTTPEngine

        return [
            OpenAIHTTPEngine(url, api_key=model.api_key(), timeout=model.timeout, answer_timeout=model.answer_timeout,
                             stream_timeout=model.stream_timeout, connect_timeout=model.connect_timeout,
                             health_timeout=settings.health.timeout,
                             max_image_bytes=settings.images.max_image_bytes)
            for url in model.replicas
        ]
    if model.engine is EngineKind.embedded:
        from lmops.engines.embedded_llamacpp import EmbeddedLlamaEngine

        return [EmbeddedLlamaEngine(model)]
    if model.engine is EngineKind.sentence_transformers:
        from lmops.engines.sentence_embeddings import SentenceEmbeddingsEngine

        return [SentenceEmbeddingsEngine(model)]
    if model.engine is EngineKind.hf:
        from lmops.engines.hf_transformers import HFTransformersEngine

        return [HFTransformersEngine(model)]
    raise ValueError(f"unknown engine kind {model.engine}")
