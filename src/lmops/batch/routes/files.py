"""/v1/files: upload (multipart, streamed to disk), list, retrieve, content, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from lmops.api.deps import json_response
from lmops.api.downloads import attachment
from lmops.api.openapi_bodies import request_body, upload_form
from lmops.batch.files import UPLOAD_PURPOSES
from lmops.batch.service import BatchService
from lmops.protocol.files import file_list, file_object

_PURPOSE = {"type": "object", "required": ["purpose"],
            "properties": {"purpose": {"type": "string", "enum": UPLOAD_PURPOSES}}}


def files_router(batch: BatchService) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["files"])

    async def _team(request: Request) -> str:
        return (await batch.core.guard.authenticate(request, "batch")).team_id

    @router.post("/files", openapi_extra=request_body(form=upload_form(_PURPOSE)))
    async def upload_file(request: Request) -> Response:
        team = await _team(request)
        row, _ = await batch.files.upload(request, team)
        return json_response(file_object(row))

    @router.get("/files")
    async def list_files(request: Request, purpose: str | None = None, limit: int = 10000, after: str | None = None,
                         order: str = "desc") -> Response:
        team = await _team(request)
        limit = max(1, min(limit, 10000))
        rows = await batch.files.list(team, purpose=purpose, limit=limit + 1, after=after, order=order)
        return json_response(file_list(rows[:limit], len(rows) > limit))

    @router.get("/files/{file_id}")
    async def retrieve_file(request: Request, file_id: str) -> Response:
        row = await batch.files.get(await _team(request), file_id)
        return json_response(file_object(row))

    @router.get("/files/{file_id}/content")
    async def file_content(request: Request, file_id: str) -> Response:
        store = batch.files
        row = await store.get(await _team(request), file_id)
        return StreamingResponse(store.chunks(row), media_type="application/octet-stream",
                                 headers={"content-length": str(row.bytes),
                                          "content-disposition": attachment(row.filename)})

    @router.delete("/files/{file_id}")
    async def delete_file(request: Request, file_id: str) -> Response:
        await batch.files.delete(await _team(request), file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})

    return router
