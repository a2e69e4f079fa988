"""Feedback routes: anyone may send a correction (it lands as pending); reviewing needs the API key.

``POST /v1/models/{name}/feedback`` is open, as the web page is, so it is bounded per client
address (a token bucket: 429) and by the store's quota (507). Its image goes through the same
decoder as predictions, so only images are stored; labels and versions are checked against the
served model before anything is written.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from imgclf import feedback
from imgclf.images import ImageDecodeError, decode
from imgclf.server.auth import require_api_key
from imgclf.server.errors import ApiError, bad_request, error_responses, not_found
from imgclf.server.feedback import FEEDBACK_OFF, FeedbackService, store_error
from imgclf.server.parsing import decode_base64, loads, read_body
from imgclf.server.registry import ServedModel
from imgclf.server.schemas import (
    FeedbackList,
    FeedbackRecord,
    FeedbackRequest,
    FeedbackSettingsInfo,
    ModelName,
    feedback_request_body,
)
from imgclf.server.state import app_state, use_model
from imgclf.server.uploads import IMAGE_FIELD, media_type, read_form

if TYPE_CHECKING:
    from imgclf.feedback.store import FeedbackStore, Record

router = APIRouter(tags=["feedback"])
# Always mounted: the settings route, and (on a server without feedback) a clear answer at its routes.
common_router = APIRouter(tags=["feedback"])
off_router = APIRouter(include_in_schema=False)
T = TypeVar("T")

# Decoding only checks that the upload is an image: a small decode (JPEG at 1/8 scale) is enough.
CHECK_MIN_SIDE = 16
REVIEW = [Depends(require_api_key)]
REVIEW_ERRORS = error_responses(400, 401, 403, 404, 501, 503)
RecordId = Annotated[int, Path(ge=1, le=2**63 - 1, description="A feedback record's id")]
FORM_FIELDS = ("label", "prediction_id", "version", "predicted_label", "predicted_score", "submitted_by")


def feedback_off() -> ApiError:
    return ApiError(404, "feedback_disabled", FEEDBACK_OFF)


def service(request: Request) -> FeedbackService:
    s = app_state(request).feedback
    if s is None:
        raise feedback_off()
    return s


@off_router.api_route("/v1/models/{name}/feedback", methods=["POST"])
@off_router.api_route("/v1/feedback", methods=["GET"])
@off_router.api_route("/v1/feedback/{rest:path}", methods=["GET", "POST", "DELETE"])
async def no_feedback() -> None:
    """Off: the routes are not in the document, but say why rather than "no route"."""
    raise feedback_off()


async def call_store(svc: FeedbackService, work: Callable[[FeedbackStore], T]) -> T:
    """``work(store)`` on a thread, its store errors mapped to HTTP answers."""
    def run() -> T:
        store = svc.store()
        try:
            return work(store)
        except feedback.FeedbackError as exc:
            raise store_error(exc) from None
    return await run_in_threadpool(run)


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def _parse(request: Request) -> tuple[FeedbackRequest, bytes | None]:
    """The request's fields and image bytes (None when it cites a prediction_id)."""
    config = app_state(request).config
    media = media_type(request)
    if media == "multipart/form-data":
        form = await read_form(request, config, max_files=1)
        fields: dict[str, Any] = {k: v for k, v in form.fields.items() if k in FORM_FIELDS}
        if "predicted_score" in fields:
            try:
                fields["predicted_score"] = float(fields["predicted_score"])
            except ValueError:
                raise bad_request("predicted_score: not a number") from None
        image = form.files[0].data if form.files else None
    elif media == "application/json" or media.endswith("+json"):
        doc = loads(await read_body(request, config.request_timeout_s), "the body")
        if not isinstance(doc, dict):
            raise bad_request('JSON body must be an object: {"label": ..., "b64": ... | "prediction_id": ...}')
        fields, image = doc, None
    else:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data (file + label) or application/json")
    try:
        req = FeedbackRequest.model_validate(fields)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise bad_request(where) from None
    if req.b64 is not None:
        image = decode_base64(req.b64, "b64")
    if image is None and req.prediction_id is None:
        raise bad_request(f"send the image (multipart {IMAGE_FIELD!r} or JSON b64) or a prediction_id")
    return req, image


def _check_label(model: ServedModel, label: str, what: str) -> None:
    if label not in model.labels:
        raise ApiError(422, "unknown_label", f"{what} {label[:100]!r} is not one of model {model.name!r}'s "
                                             f"{len(model.labels)} labels (GET /v1/models/{model.name} lists them)")


@common_router.get("/v1/feedback/settings", response_model=FeedbackSettingsInfo, summary="Whether this server takes feedback")
async def feedback_settings(request: Request) -> FeedbackSettingsInfo:
    svc = app_state(request).feedback
    return FeedbackSettingsInfo(enabled=svc is not None, keeps_uploads=svc is not None and svc.keeps_uploads)


@router.post("/v1/models/{name}/feedback", response_model=FeedbackRecord, status_code=201,
             responses={200: {"model": FeedbackRecord, "description": "The same pending correction was already stored"},
                        **error_responses(400, 404, 413, 415, 422, 429, 501, 503, 507)},
             summary="Tell the model the right label for an image (stored as pending, for review)",
             openapi_extra=feedback_request_body())
async def post_feedback(request: Request, response: Response, name: ModelName) -> FeedbackRecord:
    svc = service(request)
    model = use_model(request, name)
    client = _client(request)
    wait = svc.limiter.take(client)
    if wait > 0:
        seconds = max(1, int(wait + 0.999))
        raise ApiError(429, "rate_limited", f"too many corrections from {client}; retry in {seconds} s",
                       headers={"Retry-After": str(seconds)})
    req, image = await _parse(request)
    if req.version is not None and req.version != model.version:
        # An answer from another loaded version (e.g. the one before a rollout) is corrected for it.
        loaded = app_state(request).registry.loaded.get(model.name, {})
        if req.version not in loaded:
            raise not_found(f"model {model.name!r} version {req.version[:100]!r} is not served "
                            f"(served: {', '.join(loaded) or model.version})", code="version_not_found")
        model = loaded[req.version]
    _check_label(model, req.label, "label")
    if req.predicted_label is not None:
        _check_label(model, req.predicted_label, "predicted_label")
    sha = req.prediction_id  # used only when the image itself is not sent
    if image is None and sha is not None:
        kept = svc.uploads.get(sha)  # None: it may still be in the store
        if kept is not None:
            image = kept  # decoded when it was predicted: no need to check it again
    elif image is not None:
        s = app_state(request)
        check = functools.partial(decode, max_pixels=s.config.max_pixels, min_side=CHECK_MIN_SIDE)
        try:
            await asyncio.get_running_loop().run_in_executor(s.inference.pool, check, image)
        except ImageDecodeError as exc:
            raise ApiError(exc.http_status, exc.code, str(exc)) from None

    def work(store: FeedbackStore) -> tuple[Record, bool]:
        if image is None and (sha is None or not store.has_image(sha)):
            raise ApiError(404, "prediction_not_found", "that prediction's image is no longer kept; "
                                                        "send the image itself")
        return store.record(model=model.name, version=model.version, label=req.label, client=client,
                            image=image, sha256=None if image is not None else sha,
                            predicted_label=req.predicted_label, predicted_score=req.predicted_score,
                            submitted_by=req.submitted_by)

    record, created = await call_store(svc, work)
    verdict = ("unstated" if req.predicted_label is None else "right" if req.predicted_label == req.label
               else "wrong")
    if created:
        svc.received.labels(model.name, model.version, verdict).inc()
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/feedback/{record.id}"
    return FeedbackRecord(**record.to_dict())


Status = Annotated[str | None, Query(pattern="^(pending|accepted|rejected)$", description="only this status")]


@router.get("/v1/feedback", response_model=FeedbackList, dependencies=REVIEW, responses=REVIEW_ERRORS,
            summary="List feedback records (oldest first)")
async def list_feedback(request: Request, status: Status = None, model: str | None = None,
                        version: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> FeedbackList:
    records, total = await call_store(service(request), lambda st: st.list(
        status=status, model=model, version=version, limit=limit, offset=offset))
    return FeedbackList(total=total, records=[FeedbackRecord(**r.to_dict()) for r in records])


@router.get("/v1/feedback/{record_id:int}", response_model=FeedbackRecord, dependencies=REVIEW,
            responses=REVIEW_ERRORS, summary="One feedback record")
async def get_feedback(request: Request, record_id: RecordId) -> FeedbackRecord:
    record = await call_store(service(request), lambda st: st.get(record_id))
    return FeedbackRecord(**record.to_dict())


_MAGIC = [(b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp")]


def _image_type(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((t for magic, t in _MAGIC if data.startswith(magic)), "application/octet-stream")


@router.get("/v1/feedback/{record_id:int}/image", dependencies=REVIEW, responses=REVIEW_ERRORS,
            response_class=Response, summary="A feedback record's image, as it was sent")
async def feedback_image(request: Request, record_id: RecordId) -> Response:
    data = await call_store(service(request), lambda st: st.image(record_id))
    return Response(data, media_type=_image_type(data),
                    headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})


def _review_route(status: str) -> Callable[..., Any]:
    async def review(request: Request, record_id: RecordId) -> FeedbackRecord:
        svc = service(request)
        records = await call_store(svc, lambda st: st.set_status([record_id], status, f"api:{_client(request)}"))
        return FeedbackRecord(**records[0].to_dict())
    return review


router.add_api_route("/v1/feedback/{record_id:int}/accept", _review_route("accepted"), methods=["POST"],
                     response_model=FeedbackRecord, dependencies=REVIEW, responses=REVIEW_ERRORS,
                     summary="Accept a record (it goes into exports)", name="accept_feedback")
router.add_api_route("/v1/feedback/{record_id:int}/reject", _review_route("rejected"), methods=["POST"],
                     response_model=FeedbackRecord, dependencies=REVIEW, responses=REVIEW_ERRORS,
                     summary="Reject a record", name="reject_feedback")


@router.delete("/v1/feedback/{record_id:int}", status_code=204, dependencies=REVIEW, responses=REVIEW_ERRORS,
               response_class=Response, summary="Delete a record (and its image, when no other record cites it)")
async def delete_feedback(request: Request, record_id: RecordId) -> Response:
    await call_store(service(request), lambda st: st.delete([record_id]))
    return Response(status_code=204)
