"""Batch enrichment as a capability: the batch service with its routes (config section ``batch``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from fastapi import APIRouter

from lmops.batch.routes.batches import batches_router
from lmops.batch.routes.enrichment import enrichment_router
from lmops.batch.routes.files import files_router
from lmops.batch.service import BatchService


class BatchCapability(BatchService):
    config_section: ClassVar[str] = "batch"

    def routers(self) -> Sequence[APIRouter]:
        return [files_router(self), batches_router(self), enrichment_router(self)]
