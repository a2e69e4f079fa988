"""Open Inference Protocol (KServe V2) REST, with the classification and binary-data extensions.

The model's one input is ``image``: a BYTES tensor of encoded image files (base64 strings in JSON,
or raw bytes with the binary tensor extension Triton clients use). Without the classification
extension the output is the model's full ``(N, K)`` FP32 output, exactly what ONNX Runtime
returned; with ``"parameters": {"classification": k}`` it is the top k as ``"score:index:label"``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from imgclf import __version__
from imgclf.engine import top_k
from imgclf.server.admission import admitted
from imgclf.server.errors import ERROR_CODE_KEY, ApiError, bad_request, error_responses
from imgclf.server.inference import Inference, Timing, Upload
from imgclf.server.parsing import decode_base64, loads, off_loop, read_body, split_bytes_elements
from imgclf.server.registry import ServedModel
from imgclf.server.schemas import (
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    ModelName,
    Ready,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from imgclf.server.state import app_state, use_model

router = APIRouter(tags=["v2 (Open Inference Protocol)"])

INPUT_NAME = "image"
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["classification", "binary_tensor_data", "model_repository"]


def _model(request: Request, name: str, version: str | None, *, inference: bool = False) -> ServedModel:
    return use_model(request, name, version=version, inference=inference)


# -- health and metadata -------------------------------------------------------------------


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="imgclf", version=__version__, extensions=EXTENSIONS)


@router.get("/v2/health/live", response_model=Live, summary="Liveness")
async def live() -> Live:
    return Live(live=True)


@router.get("/v2/health/ready", response_model=Ready, responses={503: {"model": Ready, "description": "Not ready"}},
            summary="Readiness: every model loaded and warmed up")
async def ready(request: Request, response: Response) -> Ready:
    ok = app_state(request).registry.ready
    if not ok:
        request.scope[ERROR_CODE_KEY] = "not_ready"
        response.status_code = 503
    return Ready(ready=ok)


def _metadata(request: Request, model: ServedModel) -> ModelMetadata:
    loaded = app_state(request).registry.versions_of(model.name)
    return ModelMetadata(
        name=model.name,
        versions=[model.version] + [v for v in loaded if v != model.version],
        platform="onnxruntime_onnx",
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[TensorMetadata(name=model.output_name, datatype="FP32", shape=[-1, len(model.labels)])],
        parameters={"output_kind": model.output_kind, "labels": len(model.labels)},
    )


V2_404 = error_responses(400, 404, v2=True)


@router.get("/v2/models/{name}", response_model=ModelMetadata, responses=V2_404, summary="Model metadata")
async def model_metadata(request: Request, name: ModelName) -> ModelMetadata:
    return _metadata(request, _model(request, name, None))


@router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=V2_404,
            summary="Model metadata (one version)")
async def model_version_metadata(request: Request, name: ModelName, version: str) -> ModelMetadata:
    return _metadata(request, _model(request, name, version))


@router.get("/v2/models/{name}/ready", response_model=Ready, responses=V2_404, summary="Model readiness")
async def model_ready(request: Request, name: ModelName) -> Ready:
    _model(request, name, None)
    return Ready(ready=True)


@router.get("/v2/models/{name}/versions/{version}/ready", response_model=Ready, responses=V2_404,
            summary="Model readiness (one version)")
async def model_version_ready(request: Request, name: ModelName, version: str) -> Ready:
    _model(request, name, version)
    return Ready(ready=True)


# -- inference -----------------------------------------------------------------------------


def _parse_request(body: bytes, header_length: str | None, limit: int) -> tuple[InferenceRequest, list[Upload]]:
    """The JSON inference header (and the binary section after it) -> the request and its images."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise bad_request(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
        if not 0 < n <= len(body):
            raise bad_request(f"Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body")
        view = memoryview(body)  # slices of the binary section without copying megabytes
        head, binary = bytes(view[:n]), view[n:]
    else:
        head, binary = body, memoryview(b"")
    doc = loads(head, "the inference request")
    try:
        req = InferenceRequest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise bad_request(f"invalid inference request: {where}: {first['msg']}") from None
    return req, _images(req, binary, limit)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for d in data:
        out.extend(d if isinstance(d, list) else [d])
    return out


def _images(req: InferenceRequest, binary: memoryview, limit: int) -> list[Upload]:
    inp = req.inputs[0]  # the schema allows exactly one input, named "image", of BYTES
    shape = inp.shape
    if len(shape) == 2 and shape[1] != 1:
        raise bad_request(f"input shape must be [N] or [N, 1] (N images), got {shape}")
    count = shape[0]
    if count > limit:
        raise ApiError(413, "too_many_images", f"{count} images in one request; the limit is {limit}")
    size = inp.parameters.binary_data_size if inp.parameters is not None else None
    if size is not None:
        if inp.data is not None:
            raise bad_request(f"input {INPUT_NAME!r} has both data and binary_data_size")
        if size > len(binary):
            raise bad_request(f"binary_data_size {size} does not fit the {len(binary)} binary bytes")
        elements = split_bytes_elements(binary[:size], count)
    else:
        if inp.data is None:
            raise bad_request(f"input {INPUT_NAME!r} has no data")
        flat = _flatten(inp.data)
        if len(flat) != count:
            raise bad_request(f"input shape {shape} says {count} images, the data holds {len(flat)}")
        elements = [decode_base64(d, f"{INPUT_NAME}[{i}]") for i, d in enumerate(flat)]
    return [Upload(f"{INPUT_NAME}[{i}]", e) for i, e in enumerate(elements)]


def _options(req: InferenceRequest, model: ServedModel) -> tuple[int, bool]:
    """(classification k, 0 for the full tensor; whether the output goes in binary form)."""
    params = req.parameters
    k = (params.classification or 0) if params is not None else 0
    binary = bool(params.binary_data_output) if params is not None else False
    for out in req.outputs or []:
        if out.name != model.output_name:
            raise bad_request(f"unknown output {out.name!r}; the model gives {model.output_name!r}")
        p = out.parameters
        if p is not None:
            k = p.classification if p.classification is not None else k
            binary = p.binary_data if p.binary_data is not None else binary
    return k, binary


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


# The body is parsed by hand (it may carry a binary section), so the document names its schema here.
# The binary tensor extension (JSON, then raw tensor bytes, the JSON's length in the
# Inference-Header-Content-Length header) cannot be described in OpenAPI; the description says it.
INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "An inference request. With the binary tensor extension, send the JSON followed by the "
                       "tensors' bytes and set Inference-Header-Content-Length to the JSON's length.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}},
    }
}
INFER_ERRORS = error_responses(400, 404, 408, 413, 415, 422, 429, 503, 504, v2=True)


@router.post("/v2/models/{name}/infer", response_model=InferenceResponse, responses=INFER_ERRORS,
             summary="Inference", openapi_extra=INFER_BODY)
async def infer(request: Request, name: ModelName) -> Response:
    return await _infer(request, _model(request, name, None, inference=True))


@router.post("/v2/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
             responses=INFER_ERRORS, summary="Inference (one version)", openapi_extra=INFER_BODY)
async def infer_version(request: Request, name: ModelName, version: str) -> Response:
    return await _infer(request, _model(request, name, version, inference=True))


async def _infer(request: Request, model: ServedModel) -> Response:
    timing = Timing()
    s = app_state(request)
    with admitted(model) as slot:  # 429 before the body is read when the queue is full
        body = await read_body(request, s.config.request_timeout_s)
        limit = s.config.max_images_per_request
        req, uploads = await off_loop(s.inference.pool, len(body),
                                      lambda: _parse_request(body, request.headers.get(HEADER_LENGTH), limit))
        k, binary_out = _options(req, model)
        slot.release()  # outputs() takes a slot per image at once: no await in between
        out = await s.inference.outputs(model, uploads, timing)
    n = out.shape[0]
    if k:
        k = min(k, len(model.labels))
        rows = top_k(Inference.probabilities(model, out), model.labels, k)
        items = [f"{p.score:.6f}:{p.index}:{p.label}" for row in rows for p in row]
        tensor = ResponseOutput(name=model.output_name, shape=[n, k], datatype="BYTES")
        payload = _bytes_tensor([s.encode() for s in items]) if binary_out else None
        values: list[Any] = items
    else:
        out32 = np.ascontiguousarray(out, dtype="<f4")
        tensor = ResponseOutput(name=model.output_name, shape=list(out32.shape), datatype="FP32")
        payload = out32.tobytes() if binary_out else None
        values = out32.ravel().tolist()
    response = InferenceResponse(model_name=model.name, model_version=model.version, id=req.id, outputs=[tensor])
    headers = {"Server-Timing": timing.header()}
    if payload is None:
        tensor.data = values
        return _json(response, headers)
    tensor.parameters = {"binary_data_size": len(payload)}
    head = response.model_dump_json(exclude_none=True).encode()
    headers["Inference-Header-Content-Length"] = str(len(head))
    return Response(head + payload, media_type="application/octet-stream", headers=headers)


def _json(model: BaseModel, headers: dict[str, str]) -> Response:
    """A response model as JSON, serialised by pydantic (fast for a large FP32 tensor)."""
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json", headers=headers)
