"""Request images -> decode on the thread pool -> micro-batcher -> model outputs.

Decoding and preprocessing go through :func:`imgclf.pipeline.prepare`, the same code as
``imgclf predict`` and evaluation, on a thread pool so the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request

from imgclf.engine import to_probabilities, top_k
from imgclf.images import ImageDecodeError
from imgclf.pipeline import prepare
from imgclf.server.batcher import BatcherClosedError, QueueFullError
from imgclf.server.config import ServerConfig
from imgclf.server.errors import ApiError, bad_request, queue_full
from imgclf.server.registry import ServedModel

IMAGE_FIELD = "file"


@dataclass
class Upload:
    name: str
    data: bytes


@dataclass
class Timing:
    """Where a request's time went; sent as a ``Server-Timing`` header."""

    started: float = field(default_factory=time.perf_counter)
    decode_s: float = 0.0
    batch_s: float = 0.0

    def header(self) -> str:
        total = time.perf_counter() - self.started
        return (f"decode;dur={self.decode_s * 1000:.1f}, batch;dur={self.batch_s * 1000:.1f}, "
                f"total;dur={total * 1000:.1f}")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_uploads(request: Request, config: ServerConfig) -> list[Upload]:
    """The images of a predict request: multipart ``file`` fields, a raw image body or JSON base64."""
    media = _media_type(request)
    limit = config.max_images_per_request
    if media == "multipart/form-data":
        form = await request.form(max_files=limit, max_fields=32)
        try:
            parts = form.getlist(IMAGE_FIELD)
            if not parts:
                raise bad_request(f"the multipart body has no {IMAGE_FIELD!r} field; send the image(s) as "
                                  f"-F {IMAGE_FIELD}=@photo.jpg")
            uploads = []
            for i, part in enumerate(parts):
                if not isinstance(part, UploadFile):
                    raise bad_request(f"multipart field {IMAGE_FIELD!r} #{i + 1} is text, not a file upload")
                uploads.append(Upload(part.filename or f"file {i + 1}", await part.read()))
            return uploads
        finally:
            await form.close()
    if media.startswith("image/") or media == "application/octet-stream":
        body = await request.body()
        if not body:
            raise bad_request("the request body is empty; send the image bytes")
        return [Upload("body", body)]
    if media == "application/json" or media.endswith("+json"):
        return _json_instances(await request.body(), limit)
    if not media:
        raise ApiError(415, "unsupported_media_type",
                       "no Content-Type: send multipart/form-data, image/* or application/json")
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {media!r} is not accepted: send multipart/form-data, image/* or application/json")


def _json_instances(body: bytes, limit: int) -> list[Upload]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise bad_request('JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]}')
    if len(instances) > limit:
        raise ApiError(413, "too_many_images", f"{len(instances)} images in one request; the limit is {limit}")
    uploads = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict) or not isinstance(inst.get("b64"), str):
            raise bad_request(f'instance {i}: expected {{"b64": "<base64 image>"}}')
        uploads.append(Upload(f"instance {i}", decode_base64(inst["b64"], f"instance {i}")))
    return uploads


def decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{what}: not valid base64") from None


class Inference:
    """Runs requests against served models; owns the decode thread pool."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="imgclf-decode")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _decode(self, model: ServedModel, uploads: list[Upload]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        spec, max_pixels = model.spec, self.config.max_pixels
        work = functools.partial(prepare, spec=spec, max_pixels=max_pixels)
        results = await asyncio.gather(
            *(loop.run_in_executor(self.pool, work, u.data) for u in uploads),
            return_exceptions=True,
        )
        for u, r in zip(uploads, results, strict=True):
            if isinstance(r, ImageDecodeError):
                prefix = f"{u.name}: " if len(uploads) > 1 else ""
                raise ApiError(r.http_status, r.code, prefix + str(r))
            if isinstance(r, BaseException):
                raise r
        return results  # type: ignore[return-value]

    async def outputs(self, model: ServedModel, uploads: list[Upload], timing: Timing) -> np.ndarray:
        """Raw model outputs ``(N, K)`` for the uploads, through the model's micro-batcher."""
        if not uploads:
            raise bad_request("no image in the request")
        limit = min(self.config.max_images_per_request, model.batcher.queue_size)
        if len(uploads) > limit:
            raise ApiError(413, "too_many_images", f"{len(uploads)} images in one request; the limit is {limit}")
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                with model.batcher.admit(len(uploads)) as admission:
                    t0 = time.perf_counter()
                    rows = await self._decode(model, uploads)
                    t1 = time.perf_counter()
                    out = await admission.submit(rows)
                    timing.decode_s, timing.batch_s = t1 - t0, time.perf_counter() - t1
        except QueueFullError as exc:
            raise queue_full(model.name, exc.retry_after_s) from None
        except BatcherClosedError as exc:
            raise ApiError(503, "model_unloaded", str(exc)) from None
        except TimeoutError:
            raise ApiError(504, "timeout", f"the request did not finish within {self.config.request_timeout_s:g} s "
                                           "(the server is overloaded); retry later") from None
        return np.stack(out)

    @staticmethod
    def probabilities(model: ServedModel, out: np.ndarray) -> np.ndarray:
        return to_probabilities(out, model.output_kind)


def predictions_json(model: ServedModel, probs: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
    return [[p.to_dict() for p in row] for row in top_k(probs, model.labels, k)]
