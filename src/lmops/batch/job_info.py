"""What a worker needs to know about an item's job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmops.batch.workflows.workflow import Workflow


@dataclass(frozen=True)
class JobInfo:
    """What a worker needs to know about an item's job (cached: it never changes)."""

    team_id: str
    kind: str
    workflow: Workflow
    params: dict[str, Any]
    default_model: str | None
