"""The workflow registry: workflows by name, globally or for one tenant (a tenant's own wins)."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

from lmops.batch.workflows.workflow import Workflow

log = logging.getLogger("lmops.batch")
ENTRY_POINT_GROUP = "lmops.workflows"


class WorkflowRegistry:
    def __init__(self) -> None:
        self._workflows: dict[tuple[str | None, str], tuple[Workflow, dict[str, Any]]] = {}

    def register(self, workflow: Workflow, *, team: str | None = None, params: dict[str, Any] | None = None) -> None:
        """Add ``workflow`` for every team (``team=None``) or one; ``params`` are that tenant's defaults."""
        self._workflows[(team, workflow.name)] = (workflow, {**workflow.params, **(params or {})})

    def get(self, name: str, team_id: str) -> tuple[Workflow, dict[str, Any]] | None:
        return self._workflows.get((team_id, name)) or self._workflows.get((None, name))

    def version(self, name: str, team_id: str) -> str | None:
        """The hash of the definition ``name`` has for this team now (None: not registered)."""
        found = self.get(name, team_id)
        return found[0].version(found[1]) if found else None

    def names(self, team_id: str) -> list[str]:
        return sorted({n for (team, n) in self._workflows if team in (None, team_id)})

    def load_module(self, name: str) -> None:
        """Import ``name`` and call its ``register(registry)``."""
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if register is None:
            raise ValueError(f"workflow module {name!r} has no register(registry) function")
        register(self)

    def load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()(self)
            except Exception:  # noqa: BLE001 - one broken plugin must not stop the others
                log.exception("could not load workflows from entry point %s", ep.name)
