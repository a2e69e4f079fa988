"""Admission before the body is read: a full queue is answered 429 at once, not after an upload.

A predict or infer request takes one queue slot of its model before its body is read and holds it
while the body arrives and is parsed. A request of several images takes the rest when it hands its
images to :meth:`imgclf.server.inference.Inference.outputs`, which admits the request's images;
the one slot is handed over with no await in between, so a single-image request admitted here is
never refused after its upload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from imgclf.server.batcher import Admission, BatcherClosedError, QueueFullError
from imgclf.server.errors import ApiError, queue_full
from imgclf.server.registry import ServedModel


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
