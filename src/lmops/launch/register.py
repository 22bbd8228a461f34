"""A launched engine as a replica of a gateway model: the ``models:`` entry to put in lmops.yaml.

Replicas are configuration in lmops (ModelConfig.replicas; there is no API that adds one at run time), so
registering prints the entry, merged with the model's entry in the current configuration when there is one.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from lmops.config import EngineKind, ModelConfig, Settings
from lmops.launch.command import EngineCommand, Unsupported
from lmops.launch.spec import EngineSpec


def replica_entry(spec: EngineSpec, command: EngineCommand, model: str,
                  settings: Settings | None = None) -> dict[str, Any]:
    """The ``models:`` entry that serves ``model`` through this engine (and the replicas it already has)."""
    replica = f"{spec.base_url}/v1"
    existing = next((m for m in settings.models if m.name == model), None) if settings else None
    if existing is not None:
        if existing.engine is not EngineKind.openai:
            raise Unsupported(f"model {model!r} in {settings.config if settings else ''} is served by the "
                              f"{existing.engine.value} engine: only an openai model has replicas")
        entry = existing.model_dump(mode="json", exclude_defaults=True)
        if replica not in existing.replicas:
            entry["replicas"] = [*existing.replicas, replica]
    else:
        entry = {"name": model, "engine": "openai", "upstream_model": spec.served_name or spec.model,
                 "replicas": [replica], "context_length": spec.context_length}
        if command.adapter_names:
            entry["adapters"] = [{"name": name} for name in command.adapter_names]
    try:
        ModelConfig(**entry)
    except ValidationError as exc:
        raise Unsupported(f"the entry for {model!r} would not load: {exc.errors()[0]['msg']}") from None
    return entry


def replica_yaml(entry: dict[str, Any]) -> str:
    return yaml.safe_dump({"models": [entry]}, sort_keys=False, allow_unicode=True)
