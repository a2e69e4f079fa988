"""The app factory: ``create_app(config)`` builds a FastAPI app with its own models and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.middleware import Middleware
from pydantic.json_schema import models_json_schema

from imgclf import __version__
from imgclf.server import api_feedback, api_v1, api_v2, management, web
from imgclf.server.admission import AdmissionGate
from imgclf.server.auth import MANAGEMENT_OFF
from imgclf.server.config import ServerConfig
from imgclf.server.errors import install_error_handlers
from imgclf.server.middleware import BodyGuardMiddleware, MetricsMiddleware
from imgclf.server.schemas import FeedbackRequest, InferenceRequest
from imgclf.server.state import AppState

log = logging.getLogger("imgclf.server")

DESCRIPTION = """Image classification over HTTP, on ONNX Runtime.

* **v1**: `POST /v1/models/{name}/predict` (multipart `file`, a raw `image/*` body or JSON base64),
  model listing and details. `POST /predict` is the same on the default model.
* **v2**: the Open Inference Protocol (KServe V2) with the classification, binary tensor data and
  model repository extensions.
* **feedback**: `POST /v1/models/{name}/feedback` tells a model the right label for an image (pending
  review); listing, review and deletion need the API key (servers started with `--feedback`).
* Errors are `{"error": {"code": ..., "message": ...}}` with the matching HTTP status.
"""


def _limit_image_counts(doc: dict[str, Any], limit: int) -> None:
    """State this server's --max-images where the document lists images (more is 413 too_many_images)."""
    for item in doc.get("paths", {}).values():
        post = item.get("post", {})
        for media in post.get("requestBody", {}).get("content", {}).values():
            schema = media.get("schema", {})
            for key in ("file", "instances"):
                prop = schema.get("properties", {}).get(key)
                if prop is not None and prop.get("type") == "array":
                    prop["maxItems"] = limit
    shape = doc.get("components", {}).get("schemas", {}).get("RequestInput", {}).get("properties", {}).get("shape")
    if shape is not None:
        shape["items"]["maximum"] = limit  # [N] or [N, 1]: N images, at most the limit


def _openapi(app: FastAPI, config: ServerConfig) -> dict[str, Any]:
    """FastAPI's document plus the schemas of bodies that routes parse by hand."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        # A copy: route declarations share their schema dicts between apps, and this one gets this app's limits.
        doc = copy.deepcopy(get_openapi(title=app.title, version=app.version, description=app.description,
                                        routes=app.routes, tags=app.openapi_tags))
        _, defs = models_json_schema([(InferenceRequest, "validation"), (FeedbackRequest, "validation")],
                                     ref_template="#/components/schemas/{model}")
        doc.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        _limit_image_counts(doc, config.max_images_per_request)
        app.openapi_schema = doc
    return app.openapi_schema


def create_app(config: ServerConfig) -> FastAPI:
    state = AppState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.api_key is None:
            log.warning("%s", MANAGEMENT_OFF)
        task = None
        if config.load_in_background:
            task = asyncio.get_running_loop().create_task(state.registry.load_startup_models())
        else:
            await state.registry.load_startup_models()
        watcher = None
        if config.model_dir and config.store_poll_s > 0:
            watcher = asyncio.get_running_loop().create_task(state.registry.watch_store(config.store_poll_s))
        try:
            yield
        finally:
            for t in (task, watcher):
                if t is not None and not t.done():
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
            await state.registry.close()
            state.inference.close()
            if state.feedback is not None:
                state.feedback.close()

    app = FastAPI(
        title="imgclf",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        middleware=[
            Middleware(MetricsMiddleware, metrics=state.metrics),
            Middleware(BodyGuardMiddleware, max_body_bytes=config.max_body_bytes),
            Middleware(AdmissionGate, registry=state.registry),
        ],
    )
    app.state.imgclf = state
    install_error_handlers(app)
    app.include_router(api_v1.router)
    app.include_router(api_feedback.common_router)
    app.include_router(api_feedback.router if config.feedback is not None else api_feedback.off_router)
    app.include_router(api_v2.router)
    app.include_router(management.router)
    web.mount(app)
    app.openapi = lambda: _openapi(app, config)  # type: ignore[method-assign]
    return app
