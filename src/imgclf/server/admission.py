"""Admission before the body is read: a full queue is answered 429 at once, not after an upload.

A predict or infer request takes one queue slot of its model before its body is read and holds it
while the body arrives and is parsed. A request of several images takes the rest when it hands its
images to :meth:`imgclf.server.inference.Inference.outputs`, which admits the request's images;
the one slot is handed over with no await in between, so a single-image request admitted here is
never refused after its upload. :class:`AdmissionGate` answers the same 429 before routing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from starlette.types import ASGIApp, Receive, Scope, Send

from imgclf.server.batcher import Admission, BatcherClosedError, QueueFullError
from imgclf.server.errors import ApiError, queue_full, send_error
from imgclf.server.registry import ModelRegistry, ServedModel
from imgclf.server.state import ENDPOINT_KEY, MODEL_KEY


@contextlib.contextmanager
def admitted(model: ServedModel) -> Iterator[Admission]:
    """One queue slot of ``model`` for the block, or a 429 (503 while it unloads) right away."""
    try:
        admission = model.batcher.admit(1)
    except QueueFullError as exc:
        raise queue_full(model.name, exc.retry_after_s) from None
    except BatcherClosedError as exc:
        raise ApiError(503, "model_unloaded", str(exc)) from None
    with admission:
        yield admission


# The inference routes, by the template the metrics name them with.
_ROUTES = [
    (re.compile(r"^/predict$"), "/predict"),
    (re.compile(r"^/v1/models/([^/]+)/predict$"), "/v1/models/{name}/predict"),
    (re.compile(r"^/v2/models/([^/]+)/infer$"), "/v2/models/{name}/infer"),
    (re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)/infer$"), "/v2/models/{name}/versions/{version}/infer"),
    (re.compile(r"^/v1/models/([^/]+)/versions/([^/]+)/predict$"), "/v1/models/{name}/versions/{version}/predict"),
]


class AdmissionGate:
    """Refuses an inference request whose model's queue is full before any routing or parsing.

    The routes admit for real (:func:`admitted`); this is the cheap early answer that keeps a
    flood of refused requests from costing the event loop what a routed request costs, so the
    429s stay fast and the admitted requests keep the CPU.
    """

    def __init__(self, app: ASGIApp, registry: ModelRegistry) -> None:
        self.app = app
        self.registry = registry

    def _full_model(self, path: str) -> tuple[ServedModel, str] | None:
        for pattern, template in _ROUTES:
            m = pattern.match(path)
            if m is None:
                continue
            if len(m.groups()) == 2:
                model = self.registry.loaded.get(m.group(1), {}).get(m.group(2))
            elif m.groups():
                model = self.registry.models.get(m.group(1))
            else:
                try:
                    model = self.registry.default()
                except ApiError:
                    return None
            if model is None or model.batcher.depth < model.batcher.queue_size:
                return None
            return model, template
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self._full_model(scope["path"])
            if found is not None:
                model, template = found
                scope[MODEL_KEY], scope[ENDPOINT_KEY] = model.name, template
                await send_error(scope, send, queue_full(model.name, model.batcher.retry_after_s()))
                return
        await self.app(scope, receive, send)
