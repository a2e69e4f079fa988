"""Runtime model management: the Open Inference Protocol's model repository extension, and versions.

``POST /v2/repository/index`` lists the models in ``--model-dir`` and what is loaded;
``.../models/{name}/load`` loads (or reloads) a model by name, warm-up included (``?version=``: one
version of a version store, kept loaded besides the default), and ``.../unload`` drains and removes
a model or one version. ``POST /v1/models/{name}/default`` switches a version store's default
version and ``.../rollback`` returns to the one before, without a restart: the change is written to
the store's ``versions.json``, which every server on the same store follows. Only with an API key:
without one these routes are 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from imgclf.model_store import StoreError
from imgclf.server.api_v1 import versions_info
from imgclf.server.auth import require_api_key
from imgclf.server.errors import conflict, error_responses, not_found
from imgclf.server.schemas import (
    DefaultVersionRequest,
    ModelInfo,
    ModelName,
    RepositoryEntry,
    RepositoryIndexRequest,
    VersionsInfo,
)
from imgclf.server.state import app_state

router = APIRouter(tags=["management"], dependencies=[Depends(require_api_key)])

VersionQuery = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                                           description="one version of a version store (default: the default one)")]


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
             summary="Load (or reload) a model, or one of its versions, from the model directory by name")
async def load_model(request: Request, name: ModelName, version: VersionQuery = None) -> ModelInfo:
    s = app_state(request)
    model = await s.registry.load_by_name(name, version)
    return ModelInfo.of(model, s.config)


@router.post("/v2/repository/models/{name}/unload", response_model=RepositoryEntry,
             responses=error_responses(400, 401, 403, 404, 409, v2=True),
             summary="Unload a model, or one version (queued requests finish first)")
async def unload_model(request: Request, name: ModelName, version: VersionQuery = None) -> RepositoryEntry:
    await app_state(request).registry.unload(name, version)
    return RepositoryEntry(name=name, version=version, state="UNAVAILABLE", reason="unloaded")


@router.post("/v1/models/{name}/default", response_model=VersionsInfo,
             responses=error_responses(400, 401, 403, 404, 409, 422),
             summary="Make a version the default (loaded and warmed up first; requests in flight finish)")
async def set_default_version(request: Request, name: ModelName, body: DefaultVersionRequest) -> VersionsInfo:
    try:
        await app_state(request).registry.set_default(name, body.version)
    except StoreError as exc:
        raise not_found(str(exc), code="version_not_found") from None
    return versions_info(request, name)


@router.post("/v1/models/{name}/rollback", response_model=VersionsInfo,
             responses=error_responses(400, 401, 403, 404, 409, 422),
             summary="Make the previous default version the default again")
async def rollback_version(request: Request, name: ModelName) -> VersionsInfo:
    try:
        await app_state(request).registry.rollback(name)
    except StoreError as exc:
        raise conflict(str(exc), code="no_previous_version") from None
    return versions_info(request, name)
