"""ASGI middleware: the request body limit (enforced while streaming) and request metrics."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclf.server.errors import ERROR_CODE_KEY, ApiError, error_body
from imgclf.server.metrics import Metrics
from imgclf.server.state import INFER_KEY, MODEL_KEY


async def _send_error(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    scope[ERROR_CODE_KEY] = code
    body = json.dumps(error_body(scope.get("path", ""), code, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answer 413 as soon as a body is known to be too large, without reading it.

    A declared ``Content-Length`` over the limit is refused before the app runs; a chunked body is
    counted as it streams in and refused at the first chunk past the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    def _message(self) -> str:
        mb = self.limit / (1024 * 1024)
        return f"the request body is over the {mb:g} MB limit; send smaller or fewer images"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(scope, send, 400, "bad_request", "Content-Length is not a number")
                    return
                if declared > self.limit:
                    await _send_error(scope, send, 413, "payload_too_large", self._message())
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, "payload_too_large", self._message())
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Counts every request by model, endpoint (the route's template) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = 500
            scope.setdefault(ERROR_CODE_KEY, "internal_error")
            raise
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        model = scope.get(MODEL_KEY, "")
        m = self.metrics
        m.requests.labels(model, endpoint, str(status)).inc()
        if status >= 400:
            m.errors.labels(model, endpoint, str(status), scope.get(ERROR_CODE_KEY, "error")).inc()
        elif scope.get(INFER_KEY):
            m.latency.labels(model, endpoint).observe(seconds)
