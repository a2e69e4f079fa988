"""Runtime model management: the Open Inference Protocol's model repository extension.

``POST /v2/repository/index`` lists the packages in ``--model-dir`` and what is loaded;
``.../models/{name}/load`` loads (or reloads) a package by name, warm-up included, and
``.../unload`` drains and removes a model. Only with an API key: without one these routes are 403.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from imgclf.server.auth import require_api_key
from imgclf.server.errors import error_responses
from imgclf.server.schemas import ModelInfo, ModelName, RepositoryEntry, RepositoryIndexRequest
from imgclf.server.state import app_state

router = APIRouter(tags=["management"], dependencies=[Depends(require_api_key)])


@router.post("/v2/repository/index", response_model=list[RepositoryEntry],
             responses=error_responses(400, 401, 403, v2=True),
             summary="Models in the model directory and loaded models, with their state")
async def repository_index(request: Request, body: RepositoryIndexRequest | None = None) -> list[RepositoryEntry]:
    registry = app_state(request).registry
    entries: dict[str, RepositoryEntry] = {}
    for name in registry.available():
        entries[name] = RepositoryEntry(name=name, state="UNAVAILABLE", reason=registry.failures.get(name, "unloaded"))
    for name, model in registry.models.items():
        entries[name] = RepositoryEntry(name=name, version=model.version, state="READY")
    rows = [entries[n] for n in sorted(entries)]
    if body is not None and body.ready:
        rows = [r for r in rows if r.state == "READY"]
    return rows


@router.post("/v2/repository/models/{name}/load", response_model=ModelInfo,
             responses=error_responses(400, 401, 403, 404, 422, v2=True),
             summary="Load (or reload) a package from the model directory by name")
async def load_model(request: Request, name: ModelName) -> ModelInfo:
    s = app_state(request)
    model = await s.registry.load_by_name(name)
    return ModelInfo.of(model, s.config)


@router.post("/v2/repository/models/{name}/unload", response_model=RepositoryEntry,
             responses=error_responses(400, 401, 403, 404, v2=True),
             summary="Unload a model (queued requests finish first)")
async def unload_model(request: Request, name: ModelName) -> RepositoryEntry:
    await app_state(request).registry.unload(name)
    return RepositoryEntry(name=name, state="UNAVAILABLE", reason="unloaded")
