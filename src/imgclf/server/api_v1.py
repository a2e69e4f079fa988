"""imgclf's own REST API (v1) and the Flask-compatible ``POST /predict``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from imgclf.server.errors import error_responses
from imgclf.server.inference import Inference, Timing, predictions_json, read_uploads
from imgclf.server.registry import ServedModel
from imgclf.server.schemas import ModelInfo, ModelList, PredictResponse, predict_request_body
from imgclf.server.state import app_state, use_model

router = APIRouter(tags=["v1"])

TopK = Annotated[int, Query(ge=1, le=1000, description="classes per image")]
PREDICT_ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503, 504)


@router.get("/v1/models", response_model=ModelList, summary="Loaded models")
async def list_models(request: Request) -> JSONResponse:
    s = app_state(request)
    models = list(s.registry.models.values())
    default = s.registry.default().name if models else None
    return JSONResponse({"default": default, "models": [m.info(s.config) for m in models]})


@router.get("/v1/models/{name}", response_model=ModelInfo, responses=error_responses(404),
            summary="A model's labels, preprocessing, provenance and batching settings")
async def model_info(request: Request, name: str) -> JSONResponse:
    return JSONResponse(use_model(request, name).info(app_state(request).config))


async def _predict(request: Request, model: ServedModel, top_k: int) -> JSONResponse:
    timing = Timing()
    s = app_state(request)
    uploads = await read_uploads(request, s.config)
    out = await s.inference.outputs(model, uploads, timing)
    body = {
        "model": model.name,
        "version": model.version,
        "predictions": predictions_json(model, Inference.probabilities(model, out), top_k),
    }
    return JSONResponse(body, headers={"Server-Timing": timing.header()})


_PREDICT_DOC = ("Images as multipart field `file` (repeat it for several), a raw image body "
                "(`Content-Type: image/jpeg` ...), or JSON `{\"instances\": [{\"b64\": \"...\"}]}`.")


@router.post("/v1/models/{name}/predict", response_model=PredictResponse, responses=PREDICT_ERRORS,
             summary="Classify one or several images", description=_PREDICT_DOC,
             openapi_extra=predict_request_body("One or several images"))
async def predict(request: Request, name: str, top_k: TopK = 5) -> JSONResponse:
    return await _predict(request, use_model(request, name, inference=True), top_k)


@router.post("/predict", response_model=PredictResponse, responses=PREDICT_ERRORS,
             summary="Classify with the default model (the original Flask services' route)",
             description="Same as `/v1/models/{name}/predict` on the default model. " + _PREDICT_DOC,
             openapi_extra=predict_request_body("One or several images"))
async def predict_default(request: Request, top_k: TopK = 5) -> JSONResponse:
    return await _predict(request, use_model(request, None, inference=True), top_k)
