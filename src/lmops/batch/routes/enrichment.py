"""/v1/enrichment: submit records to a workflow, follow progress, fetch results (JSON pages, JSONL, CSV), cancel."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from lmops.api.bodies import parse_json
from lmops.api.deps import json_response
from lmops.api.downloads import attachment
from lmops.api.openapi_bodies import request_body, schema_of, upload_form
from lmops.batch import results
from lmops.batch.service import BatchService
from lmops.protocol.enrichment import JobCreate, JobOptions, job_list, job_object
from lmops.protocol.errors import InvalidRequest, from_validation_error


def _job_form() -> dict[str, Any]:
    """The multipart form of a job upload: ``JobOptions``' fields, ``params`` and ``metadata`` as JSON text."""
    schema = schema_of(JobOptions)
    for name in ("params", "metadata"):
        schema["properties"][name] = {"type": "string", "description": "a JSON object"}
    return upload_form(schema)


def _maybe_json(key: str, value: str) -> Any:
    if key in ("params", "metadata"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidRequest(f"Form field '{key}' must be a JSON object.", param=key) from None
    return value


def enrichment_router(batch: BatchService) -> APIRouter:
    router = APIRouter(prefix="/v1/enrichment", tags=["enrichment"])

    async def _team(request: Request) -> str:
        return (await batch.core.guard.authenticate(request, "batch")).team_id

    @router.get("/workflows")
    async def list_workflows(request: Request) -> Response:
        team = await _team(request)
        registry = batch.registry
        data = []
        for name in registry.names(team):
            if (found := registry.get(name, team)) is not None:
                wf = found[0]
                data.append({"name": name, "description": wf.description, "steps": wf.step_names})
        return json_response({"object": "list", "data": data})

    @router.post("/jobs", openapi_extra=request_body(JobCreate, _job_form()))
    async def create_job(request: Request) -> Response:
        """JSON ``{"workflow", "records": [...], "params"}``, or multipart: ``file`` (JSONL or CSV) and the same
        fields."""
        team = await _team(request)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            source, fields = await batch.files.upload(request, team, "enrichment")
            try:
                opts = JobOptions.model_validate({k: _maybe_json(k, v) for k, v in fields.items()})
            except ValidationError as exc:
                await batch.files.delete(team, source.id)
                raise from_validation_error(exc) from None
            fmt = opts.format or ("csv" if source.filename.lower().endswith(".csv") else "jsonl")
        else:
            req = await parse_json(request, JobCreate)
            opts = JobOptions(workflow=req.workflow, params=req.params, id_field=req.id_field, metadata=req.metadata)
            source, fmt = None, "jsonl"
        problem = _options_problem(opts, team)
        if problem is not None:
            if source is not None:
                await batch.files.delete(team, source.id)
            raise problem
        if source is None:
            data = b"".join(orjson.dumps(r) + b"\n" for r in req.records)
            source = await batch.files.save_bytes(team, "enrichment", "records.jsonl", data)
        row = await batch.jobs.create(team_id=team, kind="enrichment", workflow=opts.workflow,
                                      input_file_id=source.id, metadata=opts.metadata,
                                      params={**opts.params, "format": fmt, "id_field": opts.id_field})
        batch.wake_upkeep()
        return json_response(job_object(row))

    def _options_problem(opts: JobOptions, team: str) -> InvalidRequest | None:
        """Why a job with these options cannot run, found before a single record is queued (a misspelt model would
        otherwise fail every record, one by one)."""
        registry = batch.registry
        if registry.get(opts.workflow, team) is None:
            return InvalidRequest(f"Unknown workflow '{opts.workflow}'; available: {', '.join(registry.names(team))}.",
                                  param="workflow", code="unknown_workflow")
        model = opts.params.get("model")
        if model is not None and (not isinstance(model, str) or batch.core.router.find(model) is None):
            return InvalidRequest(f"No model is called {model!r}; available: "
                                  f"{', '.join(m.name for m in batch.core.settings.models)}.",
                                  param="params.model", code="model_not_found")
        return None

    @router.get("/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> Response:
        rows, more = await batch.jobs.list(await _team(request), "enrichment", after=after,
                                           limit=max(1, min(limit, 100)))
        return json_response(job_list(rows, more))

    @router.get("/jobs/{job_id}")
    async def retrieve_job(request: Request, job_id: str) -> Response:
        return json_response(job_object(await batch.jobs.get(await _team(request), job_id, "enrichment")))

    @router.post("/jobs/{job_id}/cancel")
    async def cancel_job(request: Request, job_id: str) -> Response:
        row = await batch.jobs.cancel(await _team(request), job_id, "enrichment")
        batch.wake_upkeep()
        return json_response(job_object(row))

    @router.get("/jobs/{job_id}/results")
    async def job_results(request: Request, job_id: str, after: int = 0, limit: int = 100,
                          format: str = "json") -> Response:
        """``format=json``: a page after line ``after``; ``jsonl`` / ``csv``: the whole result set, streamed."""
        job = await batch.jobs.get(await _team(request), job_id, "enrichment")
        if format == "jsonl":
            return StreamingResponse(results.jsonl(batch.core.db, job.id), media_type="application/x-ndjson",
                                     headers={"content-disposition": attachment(f"{job.id}.jsonl")})
        if format == "csv":
            found = batch.registry.get(job.workflow, job.team_id)
            steps = found[0].step_names if found else []
            return StreamingResponse(results.csv_rows(batch.core.db, job.id, steps), media_type="text/csv",
                                     headers={"content-disposition": attachment(f"{job.id}.csv")})
        if format != "json":
            raise InvalidRequest("format must be json, jsonl or csv.", param="format")
        entries, more = await results.page(batch.core.db, job.id, after, max(1, min(limit, 1000)))
        return json_response({"object": "list", "data": entries, "has_more": more,
                              "last_line": entries[-1]["line"] if entries else None})

    return router
