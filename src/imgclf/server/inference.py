"""Request images -> decode on the thread pool -> micro-batcher -> model outputs.

(Reading a request's images from its body is :mod:`imgclf.server.uploads` and
:mod:`imgclf.server.parsing`.)

Decoding and preprocessing go through :func:`imgclf.pipeline.prepare`, the same code as
``imgclf predict`` and evaluation, on a thread pool so the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from imgclf.engine import to_probabilities
from imgclf.images import ImageDecodeError
from imgclf.pipeline import prepare
from imgclf.server.batcher import BatcherClosedError, QueueFullError
from imgclf.server.config import ServerConfig
from imgclf.server.errors import ApiError, bad_request, queue_full
from imgclf.server.registry import ServedModel


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

    def total_s(self) -> float:
        return time.perf_counter() - self.started

    def header(self) -> str:
        total = self.total_s()
        return (f"decode;dur={self.decode_s * 1000:.1f}, batch;dur={self.batch_s * 1000:.1f}, "
                f"total;dur={total * 1000:.1f}")


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
