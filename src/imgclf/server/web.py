"""The web page at ``/``, its static files, the metrics endpoint and offline API docs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from imgclf.server.state import app_state

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/review", include_in_schema=False)
async def review() -> FileResponse:
    """The feedback review page (its API calls need the key, entered on the page)."""
    return FileResponse(STATIC_DIR / "review.html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


@router.get("/metrics", tags=["monitoring"], summary="Prometheus metrics",
            response_class=Response, responses={200: {"content": {"text/plain": {}}, "description": "Metrics"}})
async def metrics(request: Request) -> Response:
    m = app_state(request).metrics
    # On a thread: the feedback gauge may query the store.
    return Response(await run_in_threadpool(m.render), media_type=m.content_type)


def _swagger_assets() -> Path | None:
    """Swagger UI files shipped by the fastapi-offline package, so /docs works without internet."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    assets = _swagger_assets()
    js_url = css_url = None
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
        js_url, css_url = "/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if js_url is None or css_url is None:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="imgclf API",
                                       swagger_favicon_url="/favicon.ico", oauth2_redirect_url="/docs/oauth2-redirect")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="imgclf API", swagger_favicon_url="/favicon.ico",
                                   oauth2_redirect_url="/docs/oauth2-redirect", swagger_js_url=js_url,
                                   swagger_css_url=css_url)

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
