"""Dynamic micro-batching: many concurrent requests, one ONNX Runtime call per batch.

Each image a request brings holds a queue slot from the moment the request is admitted (before
decoding) until its row is handed to the engine, so a full queue is answered at once with 429
instead of after decoding work is wasted. A batch forms from the queued rows up to
``max_batch_size``; while more admitted rows are still being decoded, it waits for them at most
``max_delay_ms`` after its oldest row arrived. When nothing else is on its way the batch runs at
once, so a lone request never pays the batching delay. Inference runs on the batcher's own
thread, one batch at a time, leaving the event loop free.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from imgclf.engine import Array

log = logging.getLogger("imgclf.server")

# (batch size, per-row queue seconds, inference seconds)
BatchCallback = Callable[[int, list[float], float], None]
# What runs a batch: an engine's ``logits`` (``(N, C, S, S)`` in, ``(N, K)`` out), or any such function.
Infer = Callable[[Array], Array]


class QueueFullError(Exception):
    """The model's queue has no room for the request's images."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"queue full; retry in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


class BatcherClosedError(Exception):
    """The model was unloaded while the request waited."""


@dataclass(eq=False)
class _Row:
    x: Array
    future: asyncio.Future[Array]
    enqueued: float = field(default_factory=time.perf_counter)


class Admission:
    """Queue slots for one request's images; use as a context manager around decode + submit."""

    def __init__(self, batcher: MicroBatcher, n: int) -> None:
        self._batcher = batcher
        self._held = n

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._batcher._reserved -= self._held
            self._held = 0

    async def submit(self, rows: Sequence[Array]) -> list[Array]:
        """Queue the decoded rows and wait for their outputs (in order)."""
        if len(rows) != self._held:
            raise ValueError(f"admitted {self._held} rows, submitted {len(rows)}")
        return await self._batcher._submit(rows, self)


class MicroBatcher:
    def __init__(self, infer: Infer, *, name: str, max_batch_size: int = 16,
                 max_delay_ms: float = 5.0, queue_size: int = 128, on_batch: BatchCallback | None = None) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.queue_size = queue_size
        self._infer = infer
        self._on_batch = on_batch
        self._queue: collections.deque[_Row] = collections.deque()
        self._reserved = 0  # admitted rows not yet queued (still decoding)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False  # refusing new admissions
        self._stopped = False  # the batch loop has ended
        self._busy = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"imgclf-infer-{name}")
        # Moving average of inference seconds per image, for Retry-After.
        self._seconds_per_image = 0.01

    # -- admission -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Images admitted and not yet handed to the engine."""
        return self._reserved + len(self._queue)

    def retry_after_s(self) -> float:
        return (self.depth + self.max_batch_size) * self._seconds_per_image

    def admit(self, n: int) -> Admission:
        """Hold ``n`` queue slots, or raise :class:`QueueFullError` at once."""
        if self._closed:
            raise BatcherClosedError(f"model {self.name!r} is being unloaded")
        if n > self.queue_size:
            raise ValueError(f"{n} images exceed the queue size {self.queue_size}")
        if self.depth + n > self.queue_size:
            raise QueueFullError(self.retry_after_s())
        self._reserved += n
        return Admission(self, n)

    async def _submit(self, rows: Sequence[Array], admission: Admission) -> list[Array]:
        if self._stopped:  # admitted before an unload that did not wait for it
            raise BatcherClosedError(f"model {self.name!r} was unloaded")
        loop = asyncio.get_running_loop()
        items = [_Row(x, loop.create_future()) for x in rows]
        admission.release()
        self._queue.extend(items)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        finally:
            # A timed-out or disconnected caller leaves no work behind.
            for it in items:
                if not it.future.done():
                    it.future.cancel()
                if it.future.cancelled():
                    try:
                        self._queue.remove(it)
                    except ValueError:
                        pass  # already taken into a running batch

    # -- the batch loop -------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new work, let queued work finish (up to the timeout), then stop."""
        self._closed = True
        deadline = time.perf_counter() + drain_timeout_s
        while (self._queue or self._reserved or self._busy) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._stopped = True
        for it in self._queue:
            if not it.future.done():
                it.future.set_exception(BatcherClosedError(f"model {self.name!r} was unloaded"))
        self._queue.clear()
        self._executor.shutdown(wait=False)

    async def _next_batch(self) -> list[_Row]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch: list[_Row] = []
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while len(batch) < self.max_batch_size:
            if self._queue:
                item = self._queue.popleft()
                if not item.future.done():
                    batch.append(item)
                    if deadline is None:
                        deadline = loop.time() + self.max_delay_s - (time.perf_counter() - item.enqueued)
                continue
            # Queue empty: wait only for rows already admitted and being decoded right now.
            if not batch or self._reserved == 0 or deadline is None:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    def _run(self, rows: list[Array]) -> tuple[Array, float]:
        t0 = time.perf_counter()
        out = self._infer(np.stack(rows))
        return out, time.perf_counter() - t0

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Rows whose callers gave up while the batch formed are not worth running.
            batch = [it for it in await self._next_batch() if not it.future.done()]
            if not batch:
                continue
            started = time.perf_counter()
            waits = [started - it.enqueued for it in batch]
            self._busy = True
            try:
                out, seconds = await loop.run_in_executor(self._executor, self._run, [it.x for it in batch])
            except asyncio.CancelledError:
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(BatcherClosedError(f"model {self.name!r} was unloaded"))
                raise
            except Exception as exc:  # noqa: BLE001 - the callers get the engine's error
                log.exception("inference failed for model %s (batch of %d)", self.name, len(batch))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            finally:
                self._busy = False
            self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * seconds / len(batch)
            for i, it in enumerate(batch):
                if not it.future.done():
                    it.future.set_result(out[i])
            if self._on_batch is not None:
                try:
                    self._on_batch(len(batch), waits, seconds)
                except Exception:  # noqa: BLE001 - metrics must never break serving
                    log.exception("batch callback failed")
