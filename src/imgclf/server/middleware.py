"""ASGI middleware: the request body guard (limit, read timeout, lingering close) and request metrics.

A server that answers before it has read the whole body (413 for a body over the limit, 429 from
admission, 404 for an unknown model) must not then close a socket with unread bytes in it: the
kernel answers those bytes with a reset, and clients that send their whole body before reading
(Python's ``http.client``, ``requests``) never see the answer. Like nginx's lingering close, the
guard sends the answer, then reads and discards what the client is still sending, up to a bound in
bytes and time, and only then lets the connection close.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclf.server.errors import ERROR_CODE_KEY, ApiError, send_error
from imgclf.server.metrics import Metrics
from imgclf.server.state import ENDPOINT_KEY, INFER_KEY, MODEL_KEY, VERSION_KEY

# Lingering close: what is read and thrown away after an early answer before the connection closes.
DRAIN_MIN_BYTES = 64 * 1024 * 1024  # at least this much (or twice the body limit, if more)
DRAIN_SECONDS = 10.0  # in all
DRAIN_IDLE_SECONDS = 2.0  # with no byte arriving


@dataclass
class _Body:
    """What the guard has seen of one request's body."""

    declared: int | None
    chunked: bool
    expects_continue: bool
    received: int = 0
    complete: bool = False
    disconnected: bool = False
    receive_called: bool = False


def _request_headers(scope: Scope) -> tuple[list[bytes], bool, bool]:
    lengths: list[bytes] = []
    chunked = expects_continue = False
    for key, value in scope["headers"]:
        if key == b"content-length":
            lengths.append(value)
        elif key == b"transfer-encoding":
            chunked = chunked or b"chunked" in value.lower()
        elif key == b"expect":
            expects_continue = value.lower().strip() == b"100-continue"
    return lengths, chunked, expects_continue


class BodyGuardMiddleware:
    """The request body limit (declared or counted while streaming) and lingering close.

    A declared ``Content-Length`` over the limit is answered 413 before the app runs; a body
    without one is counted as it streams in and refused at the first chunk past the limit. After
    any answer sent before the body was read, the rest of the body is drained within bounds: a
    declared body within the limit is left to the HTTP server, which discards it and keeps the
    connection; anything else (a 413, a 408, a chunked body) is drained here, then closed.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.drain_bytes = max(2 * max_body_bytes, DRAIN_MIN_BYTES)

    def too_large(self) -> ApiError:
        mb = self.limit / (1024 * 1024)
        return ApiError(413, "payload_too_large",
                        f"the request body is over the {mb:g} MB limit; send smaller or fewer images")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths, chunked, expects_continue = _request_headers(scope)
        declared: int | None = None
        if lengths:
            # uvicorn's parser refuses conflicting lengths before we get here; a non-number is ours.
            try:
                declared = int(lengths[0])
            except ValueError:
                declared = None
            if declared is None or declared < 0:
                await self._error(scope, receive, send, _Body(None, chunked, expects_continue),
                                  ApiError(400, "bad_request", "Content-Length is not a number"))
                return
        body = _Body(declared, chunked and declared is None, expects_continue)
        if declared is not None and declared > self.limit:
            await self._error(scope, receive, send, body, self.too_large())
            return

        async def guarded_receive() -> Message:
            message = await receive()
            body.receive_called = True
            if message["type"] == "http.request":
                body.received += len(message.get("body", b""))
                body.complete = not message.get("more_body", False)
                if body.received > self.limit:
                    raise self.too_large()
            elif message["type"] == "http.disconnect":
                body.disconnected = True
            return message

        await self.app(scope, guarded_receive, self._lingering_send(scope, receive, send, body))

    async def _error(self, scope: Scope, receive: Receive, send: Send, body: _Body, error: ApiError) -> None:
        await send_error(scope, self._lingering_send(scope, receive, send, body), error)

    def _lingering_send(self, scope: Scope, receive: Receive, send: Send, body: _Body) -> Send:
        linger = False

        async def lingering_send(message: Message) -> None:
            nonlocal linger
            if message["type"] == "http.response.start":
                unread = not body.complete and not body.disconnected
                has_body = body.chunked or (body.declared or 0) > body.received
                if unread and has_body and (message["status"] in (408, 413) or body.chunked
                                            or (body.expects_continue and not body.receive_called)):
                    linger = True
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            elif message["type"] == "http.response.body" and linger and not message.get("more_body", False):
                # Send the whole answer but keep the response open, so receive() still reads the body.
                await send({**message, "more_body": True})
                if not (body.expects_continue and not body.receive_called):  # else nothing is on its way
                    await self._drain(receive, body)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        return lingering_send

    async def _drain(self, receive: Receive, body: _Body) -> None:
        budget = self.drain_bytes
        deadline = time.monotonic() + DRAIN_SECONDS
        while budget > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                message = await asyncio.wait_for(receive(), min(remaining, DRAIN_IDLE_SECONDS))
            except TimeoutError:
                return
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return


class MetricsMiddleware:
    """Counts every request by model, endpoint (the route's template) and status, and names the
    model version that answered in an ``X-Model-Version`` header."""

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
                version = scope.get(VERSION_KEY)
                if version is not None:
                    value = urllib.parse.quote(str(version), safe="")  # model.json's version is free text
                    headers = [*message.get("headers", []), (b"x-model-version", value.encode("ascii"))]
                    message = {**message, "headers": headers}
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
        endpoint = getattr(route, "path", None) or scope.get(ENDPOINT_KEY) or "unmatched"
        model = scope.get(MODEL_KEY, "")
        m = self.metrics
        m.requests.labels(model, endpoint, str(status)).inc()
        if status >= 400:
            m.errors.labels(model, endpoint, str(status), scope.get(ERROR_CODE_KEY, "error")).inc()
        elif scope.get(INFER_KEY):
            m.latency.labels(model, endpoint).observe(seconds)
