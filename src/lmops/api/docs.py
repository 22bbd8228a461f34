"""/docs: Swagger UI served by lmops itself, not from a CDN.

FastAPI's default page loads Swagger UI's script and style from cdn.jsdelivr.net, so on a host whose browsers
cannot reach the internet (where a self-hosted gateway often runs) /docs is a blank page. The same files ship in
the ``fastapi-offline`` package; lmops serves them under ``/docs/assets``.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS = "/docs/assets"


def install(app: FastAPI, path: str = "/docs") -> None:
    """Serve Swagger UI at ``path`` for ``app.openapi_url`` (create the app with ``docs_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get(path, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} API",
                                   swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{ASSETS}/favicon.png")
