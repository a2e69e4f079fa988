"""One JSON error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

Handlers here turn typed errors (ours, FastAPI's validation errors, Starlette's HTTP errors and
anything unexpected) into that body with the right status, so a client never sees HTML or a
traceback. Under ``/v2`` the Open Inference Protocol fixes the shape instead: ``{"error":
"<message>"}`` (Triton and KServe clients read that string), and the code rides beside it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import Scope, Send

log = logging.getLogger("imgclf.server")

# Scope key where handlers leave the error code, so the metrics middleware can count it.
ERROR_CODE_KEY = "imgclf.error_code"

_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_image",
    429: "queue_full",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ApiError(HTTPException):
    """An error with a stable machine-readable ``code`` and a message a client can act on.

    It subclasses Starlette's ``HTTPException`` so FastAPI re-raises it untouched even when it
    escapes from body parsing.
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code
        self.message = message


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, code, message)


def conflict(message: str, code: str = "conflict") -> ApiError:
    return ApiError(409, code, message)


def queue_full(model: str, retry_after_s: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after_s))
    return ApiError(429, "queue_full", f"model {model!r} is at capacity; retry in {seconds} s",
                    headers={"Retry-After": str(seconds)})


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Body of every error response (outside /v2)."""

    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """Body of an error response under /v2, as the Open Inference Protocol defines it."""

    error: str
    code: str


V2_PREFIX = "/v2"


def error_body(path: str, code: str, message: str) -> dict[str, Any]:
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        return {"error": message, "code": code}
    return {"error": {"code": code, "message": message}}


async def send_error(scope: Scope, send: Send, error: ApiError) -> None:
    """Answer ``error`` from ASGI middleware, before or outside the app: the same body and headers
    (``Retry-After`` ...) as the handlers give, and its code left for the metrics."""
    scope[ERROR_CODE_KEY] = error.code
    body = json.dumps(error_body(scope.get("path", ""), error.code, error.message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_response(request: Request, status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    request.scope[ERROR_CODE_KEY] = code
    return JSONResponse(error_body(request.url.path, code, message), status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status_code, exc.code, exc.message, exc.headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (Starlette names only the first such route's)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "\x00"})  # no route takes this method: PARTIAL
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": _allowed_methods(request)}
    code = _DEFAULT_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return error_response(request, exc.status_code, code, message, exc.headers)


def _describe(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
    return f"{where}: {err.get('msg', 'invalid')}"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI answers 422 by default; 422 is ours for undecodable images, so a malformed request is 400.
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    message = "; ".join(_describe(e) for e in errors[:5]) or "invalid request"
    # A model name that breaks the naming rule gets the same code wherever it is checked.
    code = "invalid_model_name" if any(tuple(e.get("loc", ())) == ("path", "name") for e in errors) else "bad_request"
    return error_response(request, 400, code, message)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, 500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


# OpenAPI descriptions of the error responses each kind of route can give.
def error_responses(*statuses: int, v2: bool = False) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed request",
        401: "Missing or wrong API key",
        403: "The management API is off (the server has no API key)",
        408: "The request body did not arrive within the server's timeout",
        404: "Unknown model",
        409: "The change conflicts with the model's state (for example: unloading its default version)",
        413: "Request body over the size limit (payload_too_large), or too many images (too_many_images)",
        415: "Not an image format the server reads, or an unsupported Content-Type",
        422: "Undecodable, truncated or oversized (decompression bomb) image",
        429: "The model's queue is full; retry after the Retry-After header's seconds",
        501: "The feature needs a package this server lacks",
        503: "Not ready, or a store it needs is unavailable or full (retry after Retry-After)",
        504: "The request did not finish within the server's timeout",
        507: "The feedback store is at its quota",
    }
    model = V2ErrorBody if v2 else ErrorBody
    return {s: {"model": model, "description": text.get(s, "Error")} for s in statuses}
