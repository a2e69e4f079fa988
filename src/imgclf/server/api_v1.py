"""imgclf's own REST API (v1) and the Flask-compatible ``POST /predict``."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from imgclf import feedback
from imgclf.engine import Prediction, top_k
from imgclf.model_store import StoreError
from imgclf.server.admission import admitted
from imgclf.server.errors import error_responses
from imgclf.server.feedback import FeedbackService
from imgclf.server.inference import Inference, Timing, Upload
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
log = logging.getLogger("imgclf.server")

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
    try:
        previous = store.read_state().previous if store is not None else None
        available = list(store.versions()) if store is not None else registry.versions_of(name)
    except StoreError as exc:  # versions.json broken by hand: answer what is loaded, not a 500
        log.warning("model %s: %s", name, exc)
        previous, available = None, registry.versions_of(name)
    return VersionsInfo(name=name, default=model.version, previous=previous if previous in available else None,
                        loaded=registry.versions_of(name), available=available)


@router.get("/v1/models/{name}/versions/{version}", response_model=ModelInfo, responses=error_responses(400, 404),
            summary="One loaded version's labels, preprocessing, provenance and batching settings")
async def model_version_info(request: Request, name: ModelName, version: ModelVersion) -> ModelInfo:
    return ModelInfo.of(use_model(request, name, version=version), app_state(request).config)


def _log_predictions(svc: FeedbackService, model: ServedModel, ids: list[str], preds: list[list[Prediction]],
                     timing: Timing, total_ms: float) -> None:
    """The prediction log's rows (after the response is sent; a failure costs the log, not the answer)."""
    n = max(1, len(ids))
    try:
        store = svc.store()
        for sha, top in zip(ids, preds, strict=True):
            store.log_prediction(model=model.name, version=model.version, sha256=sha,
                                 top_k=[p.to_dict() for p in top], decode_ms=timing.decode_s * 1000 / n,
                                 batch_ms=timing.batch_s * 1000, total_ms=total_ms)
    except Exception as exc:  # noqa: BLE001 - the log is best effort; the prediction was answered
        log.warning("prediction log: %s", getattr(exc, "message", exc))


def _remember(svc: FeedbackService | None, uploads: list[Upload]) -> list[str] | None:
    """Ids of the uploads (their SHA-256) for feedback to cite, kept in memory while there is room."""
    if svc is None:
        return None
    ids = [hashlib.sha256(u.data).hexdigest() for u in uploads]
    if svc.keeps_uploads:
        for sha, u in zip(ids, uploads, strict=True):
            svc.uploads.put(sha, u.data)
    return ids


async def _predict(request: Request, response: Response, model: ServedModel, k: int,
                   background: BackgroundTasks) -> PredictResponse:
    timing = Timing()
    s = app_state(request)
    with admitted(model) as slot:  # 429 before the body is read when the queue is full
        uploads = await read_uploads(request, s.config, s.inference.pool)
        slot.release()  # outputs() takes a slot per image at once: no await in between
        out = await s.inference.outputs(model, uploads, timing)
    probs = Inference.probabilities(model, out)
    response.headers["Server-Timing"] = timing.header()
    preds = top_k(probs, model.labels, k)
    svc = s.feedback
    ids = _remember(svc, uploads)
    if svc is not None and ids is not None and svc.settings.log_predictions and feedback.available():
        total_ms = timing.total_s() * 1000
        background.add_task(run_in_threadpool, _log_predictions, svc, model, ids, preds, timing, total_ms)
    return PredictResponse(model=model.name, version=model.version, predictions=preds, prediction_ids=ids)


_PREDICT_DOC = ("Images as multipart field `file` (repeat it for several), a raw image body "
                "(`Content-Type: image/jpeg` ...), or JSON `{\"instances\": [{\"b64\": \"...\"}]}`.")


@router.post("/v1/models/{name}/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=PREDICT_ERRORS,
             summary="Classify one or several images", description=_PREDICT_DOC,
             openapi_extra=predict_request_body("One or several images"))
async def predict(request: Request, response: Response, name: ModelName, background: BackgroundTasks,
                  top_k: TopK = 5) -> PredictResponse:
    return await _predict(request, response, use_model(request, name, inference=True), top_k, background)


@router.post("/v1/models/{name}/versions/{version}/predict", response_model=PredictResponse,
             response_model_exclude_none=True, responses=PREDICT_ERRORS, summary="Classify with one loaded version of a model",
             description=_PREDICT_DOC, openapi_extra=predict_request_body("One or several images"))
async def predict_version(request: Request, response: Response, name: ModelName, version: ModelVersion,
                          background: BackgroundTasks, top_k: TopK = 5) -> PredictResponse:
    return await _predict(request, response, use_model(request, name, version=version, inference=True), top_k,
                          background)


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=PREDICT_ERRORS,
             summary="Classify with the default model (the original Flask services' route)",
             description="Same as `/v1/models/{name}/predict` on the default model. " + _PREDICT_DOC,
             openapi_extra=predict_request_body("One or several images"))
async def predict_default(request: Request, response: Response, background: BackgroundTasks,
                          top_k: TopK = 5) -> PredictResponse:
    return await _predict(request, response, use_model(request, None, inference=True), top_k, background)
