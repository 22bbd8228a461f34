"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmops.api.deps import core, json_response

router = APIRouter(tags=["system"])


@router.get("/health")
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/ready")
async def ready(request: Request) -> Response:
    svc = core(request)
    models = {d.name: d.is_ready() for d in svc.router.deployments}
    ok = all(models.values())
    return json_response({"status": "ready" if ok else "not_ready", "models": models}, status=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(core(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
