"""Build the ASGI app: mount the routers, start and stop the services with the app."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from lmops import __version__
from lmops.api import admin, batches, docs, enrichment, errors, files, openai, system
from lmops.api.direct import Gateway
from lmops.api.middleware import RequestIdMiddleware
from lmops.config import Settings, load_settings
from lmops.observability.logging import configure_logging
from lmops.services import Services


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

    app = Gateway(direct_routes=openai.DIRECT_ROUTES, title="lmops", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.services = svc
    errors.install(app)
    docs.install(app)
    app.include_router(system.router)
    app.include_router(openai.router)
    app.include_router(admin.router)
    for batch_router in (files.router, batches.router, enrichment.router):
        app.include_router(batch_router)
    app.add_middleware(RequestIdMiddleware)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory lmops.app:app_from_env`` (multi-worker serve; the parent migrated).

    Each worker is a fresh process (spawned, not forked): it sets up its own JSON logs, as the parent did.
    """
    settings = load_settings()
    configure_logging(settings.server.log_level, settings.server.log_json)
    return create_app(settings, migrate=False)
