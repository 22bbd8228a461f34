"""/v1/batches: create, retrieve, list (cursor pagination), cancel."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmops.api.bodies import parse_json
from lmops.api.deps import json_response
from lmops.api.openapi_bodies import request_body
from lmops.batch.service import OPENAI_WORKFLOW, BatchService
from lmops.protocol.batches import BatchCreate, batch_list, batch_object
from lmops.protocol.errors import InvalidRequest


def batches_router(batch: BatchService) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["batches"])

    @router.post("/batches", openapi_extra=request_body(BatchCreate))
    async def create_batch(request: Request) -> Response:
        team = (await batch.core.guard.authenticate(request, "batch")).team_id
        req = await parse_json(request, BatchCreate)
        source = await batch.files.get(team, req.input_file_id)
        if source.purpose != "batch":
            raise InvalidRequest(f"File {source.id} has purpose '{source.purpose}'; a batch needs purpose 'batch'.",
                                 param="input_file_id")
        row = await batch.jobs.create(team_id=team, kind="batch", workflow=OPENAI_WORKFLOW,
                                      input_file_id=source.id, endpoint=req.endpoint,
                                      completion_window=req.completion_window, metadata=req.metadata)
        batch.wake_upkeep()
        return json_response(batch_object(row))

    @router.get("/batches")
    async def list_batches(request: Request, after: str | None = None, limit: int = 20) -> Response:
        team = (await batch.core.guard.authenticate(request, "batch")).team_id
        rows, more = await batch.jobs.list(team, "batch", after=after, limit=max(1, min(limit, 100)))
        return json_response(batch_list(rows, more))

    @router.get("/batches/{batch_id}")
    async def retrieve_batch(request: Request, batch_id: str) -> Response:
        team = (await batch.core.guard.authenticate(request, "batch")).team_id
        return json_response(batch_object(await batch.jobs.get(team, batch_id, "batch")))

    @router.post("/batches/{batch_id}/cancel")
    async def cancel_batch(request: Request, batch_id: str) -> Response:
        team = (await batch.core.guard.authenticate(request, "batch")).team_id
        row = await batch.jobs.cancel(team, batch_id, "batch")
        batch.wake_upkeep()
        return json_response(batch_object(row))

    return router
