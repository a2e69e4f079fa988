"""Typed request and response bodies, so the OpenAPI document says what the server does and checks."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, WithJsonSchema

from imgclf.engine import Prediction

if TYPE_CHECKING:
    from imgclf.server.config import ServerConfig
    from imgclf.server.registry import ServedModel

# Exactly what the server's base64 decoding accepts (strict RFC 4648): whole groups of four, padding
# only at the end.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# imgclf.package.check_name's rule without look-around (which JSON Schema tools read differently):
# 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit, never two dots in a row.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
MODEL_NAME_MAX = 64
ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, max_length=MODEL_NAME_MAX, description="A model's name")]
# A version in a path: a version folder's name (digits) or the version a plain package's model.json names.
ModelVersion = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="A model version")]
# Largest tensor dimension the server reads (the first one is also capped by --max-images: 413).
MAX_SHAPE_DIM = 2**31 - 1

# A base64 string: the pattern is for the document; decoding checks it (a regex over megabytes is wasted work).
Base64 = Annotated[StrictStr, WithJsonSchema({"type": "string", "pattern": BASE64_PATTERN,
                                              "contentEncoding": "base64",
                                              "description": "base64-encoded image file"})]

# -- v1 ------------------------------------------------------------------------------------


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[list[Prediction]] = Field(description="Per image, in request order: the top-k classes")
    prediction_ids: list[str] | None = Field(
        default=None, description="Per image, an id to cite in feedback instead of sending the image again "
                                  "(servers that take feedback)")


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
    engine: str = Field(description="The runtime: onnxruntime or openvino")
    precision: str = Field(description="What the model computes in: fp32, bf16 or int8")
    engine_reason: str = Field(description="Why this engine and precision (what --engine auto decided)")
    provenance: dict[str, Any]
    batching: Batching
    loaded_at: str

    @classmethod
    def of(cls, model: ServedModel, config: ServerConfig) -> ModelInfo:
        meta = model.package.meta if model.package is not None else None
        return cls(
            name=model.name, version=model.version, ready=True, num_classes=len(model.labels),
            labels=list(model.labels), preprocess=model.spec.to_dict(),
            output_kind="probabilities" if model.output_kind == "probabilities" else "logits",
            engine=model.engine.engine_name, precision=model.engine.precision,
            engine_reason=model.choice.reason if model.choice is not None else "given by the embedding code",
            provenance=meta.provenance.to_dict() if meta is not None else {},
            batching=Batching(max_batch_size=model.batcher.max_batch_size,
                              max_delay_ms=model.batcher.max_delay_s * 1000.0,
                              queue_size=model.batcher.queue_size, timeout_s=config.request_timeout_s),
            loaded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(model.loaded_at)),
        )


class VersionsInfo(BaseModel):
    name: str
    default: str = Field(description="The version the unversioned routes use")
    previous: str | None = Field(default=None, description="The version a rollback returns to")
    loaded: list[str] = Field(description="Versions this server has loaded (addressable as .../versions/{v})")
    available: list[str] = Field(description="Versions in the model directory")


class DefaultVersionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = Field(
        description="The version to make the default")


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
                "properties": {"b64": {"type": "string", "pattern": BASE64_PATTERN, "contentEncoding": "base64",
                                       "description": "base64-encoded image file"}},
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


ImageCount = Annotated[StrictInt, Field(ge=1, le=MAX_SHAPE_DIM)]


class InputParameters(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    binary_data_size: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None, description="Bytes of this input in the binary section (binary tensor extension)")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal["image"] = Field(description="The models' one input")
    shape: list[ImageCount] = Field(min_length=1, max_length=2, description="[N] or [N, 1]: N images")
    datatype: Literal["BYTES"] = Field(description="Encoded image files")
    parameters: InputParameters | None = None
    data: list[Base64 | list[Base64]] | None = Field(
        default=None, description="N base64-encoded image files (absent with the binary tensor extension)")


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    classification: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None, description="Return the top k classes as 'score:index:label' instead of the tensor")
    binary_data: StrictBool | None = Field(default=None, description="Return the output in the binary section")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: StrictStr
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    classification: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None, description="Return the top k classes as 'score:index:label' instead of the tensor")
    binary_data_output: StrictBool | None = Field(default=None, description="Return outputs in the binary section")


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: StrictStr | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=1, description="One input, 'image'")
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
    model_config = ConfigDict(strict=True)
    ready: StrictBool | None = Field(default=None, description="true: list only loaded models")


# -- feedback ------------------------------------------------------------------------------

FEEDBACK_LABEL_MAX = 500


class FeedbackRequest(BaseModel):
    """A correction as JSON: the label the image should have, and the image or the prediction's id."""

    # The image or the prediction's id: one of them present, and not null.
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"anyOf": [
        {"required": ["b64"], "properties": {"b64": {"type": "string"}}},
        {"required": ["prediction_id"], "properties": {"prediction_id": {"type": "string"}}}]})
    label: StrictStr = Field(min_length=1, max_length=FEEDBACK_LABEL_MAX, description="The right label (one of the model's labels)")
    b64: Base64 | None = Field(default=None, description="The image, base64-encoded (or give prediction_id)")
    prediction_id: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                            description="The prediction_id a predict response gave for the image")
    version: StrictStr | None = Field(default=None, max_length=200,
                                      description="The model version that answered (default: the one served)")
    predicted_label: StrictStr | None = Field(default=None, max_length=FEEDBACK_LABEL_MAX,
                                              description="What the model said")
    predicted_score: float | None = Field(default=None, ge=0.0, le=1.0, description="Its score")
    submitted_by: StrictStr | None = Field(default=None, max_length=200, description="Who sends it, as they name themselves")


class FeedbackRecord(BaseModel):
    id: int
    sha256: str = Field(description="SHA-256 of the image's bytes")
    model: str
    version: str
    label: str = Field(description="The label the person gave")
    predicted_label: str | None
    predicted_score: float | None
    client: str = Field(description="The sender's address")
    submitted_by: str | None
    status: Literal["pending", "accepted", "rejected"]
    created_at: str
    reviewed_at: str | None
    reviewed_by: str | None


class FeedbackList(BaseModel):
    total: int = Field(description="Records matching the filters, in all")
    records: list[FeedbackRecord]


class FeedbackSettingsInfo(BaseModel):
    enabled: bool = Field(description="Whether this server takes feedback")
    keeps_uploads: bool = Field(description="Whether predict responses carry prediction_ids to cite")


def feedback_request_body() -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "requestBody": {
            "required": True,
            "description": "The right label and the image (a file or base64), or the prediction_id of a "
                           "recent prediction",
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["label"],
                        "anyOf": [{"required": ["file"]}, {"required": ["prediction_id"]}],
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": "the image"},
                            "label": {**text, "minLength": 1, "maxLength": FEEDBACK_LABEL_MAX},
                            "prediction_id": {**text, "pattern": r"^[0-9a-f]{64}$"},
                            "version": text, "predicted_label": text,
                            "predicted_score": {"type": "number", "minimum": 0, "maximum": 1},
                            "submitted_by": text,
                        },
                    }
                },
                "application/json": {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}},
            },
        }
    }
