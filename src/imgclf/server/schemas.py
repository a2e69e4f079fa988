"""Typed request and response bodies, so the OpenAPI document says what the server does."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# -- v1 ------------------------------------------------------------------------------------


class Prediction(BaseModel):
    index: int = Field(description="Class index in the model's output")
    label: str
    score: float = Field(description="Class probability, 0..1")


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[list[Prediction]] = Field(description="Per image, in request order: the top-k classes")


class Batching(BaseModel):
    max_batch_size: int
    max_delay_ms: float
    queue_size: int
    timeout_s: float


class ModelInfo(BaseModel):
    name: str
    version: str
    ready: bool
    num_classes: int
    labels: list[str]
    preprocess: dict[str, Any]
    output_kind: Literal["logits", "probabilities"]
    provenance: dict[str, Any]
    batching: Batching
    loaded_at: str


class ModelList(BaseModel):
    default: str | None = Field(description="The model POST /predict uses")
    models: list[ModelInfo]


# JSON request body of the predict routes (the multipart and raw-image forms are described inline).
INSTANCES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["instances"],
    "properties": {
        "instances": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["b64"],
                "properties": {"b64": {"type": "string", "description": "base64-encoded image file"}},
            },
        }
    },
}


def predict_request_body(description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "array", "minItems": 1,
                                                "items": {"type": "string", "format": "binary"},
                                                "description": "one or several image files"}},
                    }
                },
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": INSTANCES_SCHEMA},
            },
        }
    }


# -- v2 (Open Inference Protocol) -------------------------------------------------------------


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(default=None, description="BYTES: base64-encoded image files")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description='{"classification": k} returns the top-k classes instead of the full tensor')
    inputs: list[RequestInput] = Field(min_length=1, description="One input, 'image': BYTES, shape [N] or [N, 1]")
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class RepositoryEntry(BaseModel):
    name: str
    version: str | None = None
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""


class RepositoryIndexRequest(BaseModel):
    ready: bool | None = Field(default=None, description="true: list only loaded models")
