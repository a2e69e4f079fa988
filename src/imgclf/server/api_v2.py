"""Open Inference Protocol (KServe V2) REST, with the classification and binary-data extensions.

The model's one input is ``image``: a BYTES tensor of encoded image files (base64 strings in JSON,
or raw bytes with the binary tensor extension Triton clients use). Without the classification
extension the output is the model's full ``(N, K)`` FP32 output, exactly what ONNX Runtime
returned; with ``"parameters": {"classification": k}`` it is the top k as ``"score:index:label"``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from imgclf import __version__
from imgclf.engine import top_k
from imgclf.server.errors import ERROR_CODE_KEY, bad_request, error_responses, not_found
from imgclf.server.inference import Inference, Timing, Upload, decode_base64
from imgclf.server.registry import ServedModel
from imgclf.server.schemas import (
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    Ready,
    ServerMetadata,
)
from imgclf.server.state import app_state, use_model

router = APIRouter(tags=["v2 (Open Inference Protocol)"])

INPUT_NAME = "image"
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["classification", "binary_tensor_data", "model_repository"]


def _model(request: Request, name: str, version: str | None, *, inference: bool = False) -> ServedModel:
    model = use_model(request, name, inference=inference)
    if version is not None and version != model.version:
        raise not_found(f"model {name!r} has version {model.version!r}, not {version!r}", code="model_not_found")
    return model


# -- health and metadata -------------------------------------------------------------------


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "imgclf", "version": __version__, "extensions": EXTENSIONS}


@router.get("/v2/health/live", response_model=Live, summary="Liveness")
async def live() -> dict[str, Any]:
    return {"live": True}


@router.get("/v2/health/ready", response_model=Ready, responses={503: {"model": Ready, "description": "Not ready"}},
            summary="Readiness: every model loaded and warmed up")
async def ready(request: Request) -> JSONResponse:
    ok = app_state(request).registry.ready
    if not ok:
        request.scope[ERROR_CODE_KEY] = "not_ready"
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _metadata(model: ServedModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": model.output_name, "datatype": "FP32", "shape": [-1, len(model.labels)]}],
        "parameters": {"output_kind": model.output_kind, "labels": len(model.labels)},
    }


@router.get("/v2/models/{name}", response_model=ModelMetadata, responses=error_responses(404, v2=True),
            summary="Model metadata")
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return _metadata(_model(request, name, None))


@router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=error_responses(404, v2=True),
            summary="Model metadata (one version)")
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return _metadata(_model(request, name, version))


@router.get("/v2/models/{name}/ready", response_model=Ready, responses=error_responses(404, v2=True),
            summary="Model readiness")
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    _model(request, name, None)
    return {"ready": True}


@router.get("/v2/models/{name}/versions/{version}/ready", response_model=Ready, responses=error_responses(404, v2=True),
            summary="Model readiness (one version)")
async def model_version_ready(request: Request, name: str, version: str) -> dict[str, Any]:
    _model(request, name, version)
    return {"ready": True}


# -- inference -----------------------------------------------------------------------------


async def _read_request(request: Request) -> tuple[InferenceRequest, bytes]:
    """The JSON inference header and the binary section that may follow it."""
    body = await request.body()
    raw_len = request.headers.get(HEADER_LENGTH)
    if raw_len is not None:
        try:
            n = int(raw_len)
        except ValueError:
            raise bad_request(f"Inference-Header-Content-Length {raw_len!r} is not an integer") from None
        if not 0 < n <= len(body):
            raise bad_request(f"Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        doc = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the inference request is not valid JSON: {exc}") from None
    try:
        return InferenceRequest.model_validate(doc), binary
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise bad_request(f"invalid inference request: {where}: {first['msg']}") from None


def _flatten(data: list[Any], depth: int = 0) -> list[Any]:
    if depth > 8:
        raise bad_request("input data is nested too deeply")
    out: list[Any] = []
    for d in data:
        out.extend(_flatten(d, depth + 1) if isinstance(d, list) else [d])
    return out


def _split_bytes_elements(blob: bytes) -> list[bytes]:
    """A BYTES tensor in binary form: each element is a 4-byte little-endian length, then the bytes."""
    out, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise bad_request("binary BYTES data is truncated (incomplete length prefix)")
        (n,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + n > len(blob):
            raise bad_request("binary BYTES data is truncated (element longer than the data)")
        out.append(blob[pos:pos + n])
        pos += n
    return out


def _images(req: InferenceRequest, binary: bytes) -> list[Upload]:
    if len(req.inputs) != 1:
        raise bad_request(f"expected one input ({INPUT_NAME!r}), got {len(req.inputs)}")
    inp = req.inputs[0]
    if inp.name != INPUT_NAME:
        raise bad_request(f"unknown input {inp.name!r}; the model takes {INPUT_NAME!r}")
    if inp.datatype != "BYTES":
        raise bad_request(f"input {INPUT_NAME!r} is BYTES (encoded image files), not {inp.datatype}")
    if not inp.shape or any(d < 0 for d in inp.shape) or int(np.prod(inp.shape[1:], dtype=np.int64)) != 1:
        raise bad_request(f"input shape must be [N] or [N, 1] (N images), got {inp.shape}")
    count = inp.shape[0]
    params = inp.parameters or {}
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise bad_request(f"binary_data_size {size!r} does not fit the {len(binary)} binary bytes")
        elements = _split_bytes_elements(binary[:size])
    else:
        if inp.data is None:
            raise bad_request(f"input {INPUT_NAME!r} has no data")
        flat = _flatten(inp.data)
        if not all(isinstance(d, str) for d in flat):
            raise bad_request("BYTES data in JSON must be base64 strings")
        elements = [decode_base64(d, f"{INPUT_NAME}[{i}]") for i, d in enumerate(flat)]
    if len(elements) != count:
        raise bad_request(f"input shape {inp.shape} says {count} images, the data holds {len(elements)}")
    return [Upload(f"{INPUT_NAME}[{i}]", e) for i, e in enumerate(elements)]


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad_request(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _options(req: InferenceRequest, model: ServedModel) -> tuple[int, bool]:
    """(classification k, 0 for the full tensor; whether the output goes in binary form)."""
    params = req.parameters or {}
    k = _positive_int(params.get("classification", 0), "classification")
    binary = bool(params.get("binary_data_output", False))
    for out in req.outputs or []:
        if out.name != model.output_name:
            raise bad_request(f"unknown output {out.name!r}; the model gives {model.output_name!r}")
        p = out.parameters or {}
        k = _positive_int(p.get("classification", k), "classification")
        binary = bool(p.get("binary_data", binary))
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
INFER_ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503, 504, v2=True)


@router.post("/v2/models/{name}/infer", response_model=InferenceResponse, responses=INFER_ERRORS,
             summary="Inference", openapi_extra=INFER_BODY)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, _model(request, name, None, inference=True))


@router.post("/v2/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
             responses=INFER_ERRORS, summary="Inference (one version)", openapi_extra=INFER_BODY)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, _model(request, name, version, inference=True))


async def _infer(request: Request, model: ServedModel) -> Response:
    timing = Timing()
    s = app_state(request)
    req, binary = await _read_request(request)
    uploads = _images(req, binary)
    k, binary_out = _options(req, model)
    out = await s.inference.outputs(model, uploads, timing)
    n = out.shape[0]
    if k:
        k = min(k, len(model.labels))
        probs = Inference.probabilities(model, out)
        rows = top_k(probs, model.labels, k)
        items = [f"{p.score:.6f}:{p.index}:{p.label}" for row in rows for p in row]
        tensor: dict[str, Any] = {"name": model.output_name, "shape": [n, k], "datatype": "BYTES"}
        payload = _bytes_tensor([s.encode() for s in items]) if binary_out else None
        values: list[Any] = items
    else:
        out32 = np.ascontiguousarray(out, dtype="<f4")
        tensor = {"name": model.output_name, "shape": list(out32.shape), "datatype": "FP32"}
        payload = out32.tobytes() if binary_out else None
        values = out32.ravel().tolist()
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": [tensor]}
    if req.id is not None:
        response["id"] = req.id
    headers = {"Server-Timing": timing.header()}
    if payload is None:
        tensor["data"] = values
        return JSONResponse(response, headers=headers)
    tensor["parameters"] = {"binary_data_size": len(payload)}
    head = json.dumps(response, separators=(",", ":")).encode()
    headers["Inference-Header-Content-Length"] = str(len(head))
    return Response(head + payload, media_type="application/octet-stream", headers=headers)
