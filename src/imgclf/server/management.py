"""Runtime model management: the Open Inference Protocol's model repository extension.

``POST /v2/repository/index`` lists the packages in ``--model-dir`` and what is loaded;
``.../models/{name}/load`` loads (or reloads) a package by name, warm-up included, and
``.../unload`` drains and removes a model. Behind the API key when one is set.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from imgclf.server.auth import require_api_key
from imgclf.server.errors import error_responses
from imgclf.server.schemas import ModelInfo, RepositoryEntry, RepositoryIndexRequest
from imgclf.server.state import app_state

router = APIRouter(tags=["management"], dependencies=[Depends(require_api_key)])


@router.post("/v2/repository/index", response_model=list[RepositoryEntry], responses=error_responses(400, 401, v2=True),
             summary="Models in the model directory and loaded models, with their state")
async def repository_index(request: Request, body: RepositoryIndexRequest | None = None) -> list[dict[str, Any]]:
    registry = app_state(request).registry
    entries: dict[str, dict[str, Any]] = {}
    for name in registry.available():
        entries[name] = {"name": name, "state": "UNAVAILABLE", "reason": registry.failures.get(name, "unloaded")}
    for name, model in registry.models.items():
        entries[name] = {"name": name, "version": model.version, "state": "READY", "reason": ""}
    rows = [entries[n] for n in sorted(entries)]
    if body is not None and body.ready:
        rows = [r for r in rows if r["state"] == "READY"]
    return rows


@router.post("/v2/repository/models/{name}/load", response_model=ModelInfo,
             responses=error_responses(400, 401, 404, 422, v2=True),
             summary="Load (or reload) a package from the model directory by name")
async def load_model(request: Request, name: str) -> JSONResponse:
    s = app_state(request)
    model = await s.registry.load_by_name(name)
    return JSONResponse(model.info(s.config))


@router.post("/v2/repository/models/{name}/unload", response_model=RepositoryEntry,
             responses=error_responses(401, 404, v2=True), summary="Unload a model (queued requests finish first)")
async def unload_model(request: Request, name: str) -> dict[str, Any]:
    await app_state(request).registry.unload(name)
    return {"name": name, "state": "UNAVAILABLE", "reason": "unloaded"}
