"""The dynamic micro-batcher on its own: batch formation, each caller's rows, the bounded queue,
cancellation, engine errors and draining on stop. The engine is a plain function here."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from imgclf.server.batcher import BatcherClosedError, MicroBatcher, QueueFullError


class RecordingEngine:
    """Returns each row's id (its first value) times 10, and remembers every batch it ran."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[float]] = []
        self.gate = gate
        self.fail = fail

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise RuntimeError("engine exploded")
        self.batches.append([float(v) for v in x[:, 0]])
        return x[:, :1] * 10.0


def row(i: float) -> np.ndarray:
    return np.full(3, i, np.float32)


async def call(b: MicroBatcher, *ids: float) -> list[float]:
    with b.admit(len(ids)) as adm:
        out = await adm.submit([row(i) for i in ids])
    return [float(o[0]) for o in out]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_each_caller_gets_its_own_rows_and_batches_respect_the_size():
    async def main():
        engine = RecordingEngine()
        b = MicroBatcher(engine, name="m", max_batch_size=4, max_delay_ms=50, queue_size=100)
        b.start()
        results = await asyncio.gather(*(call(b, i, i + 0.5) for i in range(10)))
        await b.stop()
        return engine, results

    engine, results = run(main())
    assert results == [[i * 10.0, (i + 0.5) * 10.0] for i in range(10)]
    assert all(1 <= len(batch) <= 4 for batch in engine.batches)
    assert sorted(v for batch in engine.batches for v in batch) == sorted(
        v for i in range(10) for v in (i, i + 0.5))
    assert len(engine.batches) < 20  # rows really were batched together


def test_lone_request_does_not_wait_for_the_delay():
    async def main():
        engine = RecordingEngine()
        # A 60 s delay would hang the test if a lone request waited for company.
        b = MicroBatcher(engine, name="m", max_batch_size=8, max_delay_ms=60_000, queue_size=10)
        b.start()
        out = await asyncio.wait_for(call(b, 7), 5)
        await b.stop()
        return out

    assert run(main()) == [70.0]


def test_batch_waits_for_rows_still_being_decoded():
    async def main():
        engine = RecordingEngine()
        b = MicroBatcher(engine, name="m", max_batch_size=8, max_delay_ms=60_000, queue_size=10)
        b.start()
        slow = b.admit(1)  # admitted: "decoding" while the first row is submitted

        async def later():
            await asyncio.sleep(0.05)
            with slow:
                return await slow.submit([row(2)])

        first, second = await asyncio.gather(call(b, 1), later())
        await b.stop()
        return engine, first, second

    engine, first, second = run(main())
    assert first == [10.0] and float(second[0][0]) == 20.0
    assert engine.batches == [[1.0, 2.0]]


def test_full_queue_refuses_at_admission_with_a_retry_hint():
    async def main():
        gate = threading.Event()
        engine = RecordingEngine(gate)
        b = MicroBatcher(engine, name="m", max_batch_size=1, max_delay_ms=0, queue_size=3)
        b.start()
        running = asyncio.ensure_future(call(b, 0))  # taken by the engine, which blocks on the gate
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(call(b, i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        assert b.depth == 3
        with pytest.raises(QueueFullError) as exc:
            b.admit(1)
        gate.set()
        done = await asyncio.gather(running, *queued)
        b.admit(3).release()  # room again once drained
        await b.stop()
        return exc.value, done

    err, done = run(main())
    assert err.retry_after_s > 0
    assert done == [[0.0], [10.0], [20.0], [30.0]]


def test_cancelled_callers_leave_no_work_behind():
    async def main():
        gate = threading.Event()
        engine = RecordingEngine(gate)
        b = MicroBatcher(engine, name="m", max_batch_size=1, max_delay_ms=0, queue_size=10)
        b.start()
        first = asyncio.ensure_future(call(b, 1))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(call(b, 2))
        await asyncio.sleep(0.05)
        assert b.depth == 1
        doomed.cancel()
        await asyncio.sleep(0.01)
        assert b.depth == 0  # its slot is free at once
        gate.set()
        await first
        after = await call(b, 3)
        await b.stop()
        return engine, after

    engine, after = run(main())
    assert after == [30.0]
    assert engine.batches == [[1.0], [3.0]]


def test_engine_errors_reach_every_caller_of_the_batch():
    async def main():
        b = MicroBatcher(RecordingEngine(fail=True), name="m", max_batch_size=4, max_delay_ms=10, queue_size=10)
        b.start()
        results = await asyncio.gather(call(b, 1), call(b, 2), return_exceptions=True)
        await b.stop()
        return results

    results = run(main())
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)


def test_stop_drains_queued_work_then_refuses():
    async def main():
        engine = RecordingEngine()
        b = MicroBatcher(engine, name="m", max_batch_size=2, max_delay_ms=0, queue_size=10)
        b.start()
        pending = [asyncio.ensure_future(call(b, i)) for i in range(5)]
        await asyncio.sleep(0)
        await b.stop()
        done = await asyncio.gather(*pending)
        with pytest.raises(BatcherClosedError):
            b.admit(1)
        return done

    assert run(main()) == [[i * 10.0] for i in range(5)]
