"""imgclf's own REST API (v1) and the Flask-compatible ``POST /predict``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from imgclf.engine import top_k
from imgclf.server.admission import admitted
from imgclf.server.errors import error_responses
from imgclf.server.inference import Inference, Timing
from imgclf.server.registry import ServedModel
from imgclf.server.schemas import (
    ModelInfo,
    ModelList,
    ModelName,
    ModelVersion,
    PredictResponse,
    VersionsInfo,
    predict_request_body,
)
from imgclf.server.state import app_state, use_model
from imgclf.server.uploads import read_uploads

router = APIRouter(tags=["v1"])

TopK = Annotated[int, Query(ge=1, le=1000, description="classes per image")]
PREDICT_ERRORS = error_responses(400, 404, 408, 413, 415, 422, 429, 503, 504)


@router.get("/v1/models", response_model=ModelList, summary="Loaded models")
async def list_models(request: Request) -> ModelList:
    s = app_state(request)
    models = list(s.registry.models.values())
    default = s.registry.default().name if models else None
    return ModelList(default=default, models=[ModelInfo.of(m, s.config) for m in models])


@router.get("/v1/models/{name}", response_model=ModelInfo, responses=error_responses(400, 404),
            summary="A model's labels, preprocessing, provenance and batching settings")
async def model_info(request: Request, name: ModelName) -> ModelInfo:
    return ModelInfo.of(use_model(request, name), app_state(request).config)


@router.get("/v1/models/{name}/versions", response_model=VersionsInfo, responses=error_responses(400, 404),
            summary="A model's default version, loaded versions and versions in the model directory")
async def model_versions(request: Request, name: ModelName) -> VersionsInfo:
    return versions_info(request, name)


def versions_info(request: Request, name: str) -> VersionsInfo:
    registry = app_state(request).registry
    model = use_model(request, name)
    store = registry.stores.get(name)
    previous = store.read_state().previous if store is not None else None
    available = list(store.versions()) if store is not None else registry.versions_of(name)
    return VersionsInfo(name=name, default=model.version, previous=previous if previous in available else None,
                        loaded=registry.versions_of(name), available=available)


@router.get("/v1/models/{name}/versions/{version}", response_model=ModelInfo, responses=error_responses(400, 404),
            summary="One loaded version's labels, preprocessing, provenance and batching settings")
async def model_version_info(request: Request, name: ModelName, version: ModelVersion) -> ModelInfo:
    return ModelInfo.of(use_model(request, name, version=version), app_state(request).config)


async def _predict(request: Request, response: Response, model: ServedModel, k: int) -> PredictResponse:
    timing = Timing()
    s = app_state(request)
    with admitted(model) as slot:  # 429 before the body is read when the queue is full
        uploads = await read_uploads(request, s.config, s.inference.pool)
        slot.release()  # outputs() takes a slot per image at once: no await in between
        out = await s.inference.outputs(model, uploads, timing)
    probs = Inference.probabilities(model, out)
    response.headers["Server-Timing"] = timing.header()
    return PredictResponse(model=model.name, version=model.version, predictions=top_k(probs, model.labels, k))


_PREDICT_DOC = ("Images as multipart field `file` (repeat it for several), a raw image body "
                "(`Content-Type: image/jpeg` ...), or JSON `{\"instances\": [{\"b64\": \"...\"}]}`.")


@router.post("/v1/models/{name}/predict", response_model=PredictResponse, responses=PREDICT_ERRORS,
             summary="Classify one or several images", description=_PREDICT_DOC,
             openapi_extra=predict_request_body("One or several images"))
async def predict(request: Request, response: Response, name: ModelName, top_k: TopK = 5) -> PredictResponse:
    return await _predict(request, response, use_model(request, name, inference=True), top_k)


@router.post("/v1/models/{name}/versions/{version}/predict", response_model=PredictResponse,
             responses=PREDICT_ERRORS, summary="Classify with one loaded version of a model",
             description=_PREDICT_DOC, openapi_extra=predict_request_body("One or several images"))
async def predict_version(request: Request, response: Response, name: ModelName, version: ModelVersion,
                          top_k: TopK = 5) -> PredictResponse:
    return await _predict(request, response, use_model(request, name, version=version, inference=True), top_k)


@router.post("/predict", response_model=PredictResponse, responses=PREDICT_ERRORS,
             summary="Classify with the default model (the original Flask services' route)",
             description="Same as `/v1/models/{name}/predict` on the default model. " + _PREDICT_DOC,
             openapi_extra=predict_request_body("One or several images"))
async def predict_default(request: Request, response: Response, top_k: TopK = 5) -> PredictResponse:
    return await _predict(request, response, use_model(request, None, inference=True), top_k)
