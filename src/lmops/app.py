"""Build the ASGI app: the core's routes and each capability's, one middleware stack around all of them."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from lmops import __version__
from lmops.api import docs, errors, openai, system
from lmops.api.direct import DirectRoutesMiddleware
from lmops.api.middleware import AccessLogMiddleware, BodyLimitMiddleware, RequestIdMiddleware
from lmops.config import Settings, load_settings
from lmops.observability.logging import configure_logging
from lmops.services import Services

# Room in a multipart upload's body for its text fields and part headers, beyond the file's own limit.
FORM_ALLOWANCE = 1024 * 1024

# Headers a browser page may read from a cross-origin answer (beyond the CORS-safelisted ones).
EXPOSED_HEADERS = ["x-request-id", "retry-after", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                   "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                   "x-ratelimit-reset-tokens"]


def create_app(settings: Settings | None = None, *, services: Services | None = None,
               migrate: bool = True) -> FastAPI:
    settings = settings or (services.settings if services else load_settings())
    svc = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await svc.start(migrate=migrate)
        # Everything built at startup lives as long as the app: keep it out of the garbage collector's
        # full passes, which otherwise stall requests for milliseconds (the gateway's p99). A request
        # allocates a few hundred tracked objects, nearly all freed by reference counting: collecting
        # the young generation every 700 allocations (the default) re-scans the requests in flight
        # several times each; every 20,000 scans them about once.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, *gc.get_threshold()[1:])
        try:
            yield
        finally:
            await svc.stop()

    # FastAPI's native OpenTelemetry stays off: it would check for providers on every request, and lmops's
    # observability is its own (logs, Prometheus metrics).
    app = FastAPI(title="lmops", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.services = svc
    app.state.core = svc.core
    errors.install(app)
    docs.install(app)
    app.include_router(system.router)
    app.include_router(openai.router)
    for capability in svc.capabilities:
        for router in capability.routers():
            app.include_router(router)
    # Added innermost first: a request passes the request id, the log line, CORS and the body limit in turn,
    # then the inference routes are served directly (api/direct.py) and every other route by FastAPI's router.
    server = settings.server
    app.add_middleware(DirectRoutesMiddleware, routes=openai.DIRECT_ROUTES)
    app.add_middleware(BodyLimitMiddleware, max_bytes=server.max_body_bytes,
                       max_upload_bytes=max(server.max_body_bytes, settings.batch.max_upload_bytes + FORM_ALLOWANCE))
    if server.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=server.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=EXPOSED_HEADERS)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory lmops.app:app_from_env`` (multi-worker serve; the parent migrated).

    Each worker is a fresh process (spawned, not forked): it sets up its own JSON logs, as the parent did.
    """
    settings = load_settings()
    configure_logging(settings.server.log_level, settings.server.log_json)
    return create_app(settings, migrate=False)
