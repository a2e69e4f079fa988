"""Overload answers: a full queue gives 429 with Retry-After at once, a slow request gives 504,
and neither hangs or crashes the server. The engine is the tiny model made slow on purpose."""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import assert_error, jpeg_bytes, wait_ready

from imgclf.engine import OnnxEngine, to_probabilities
from imgclf.package import load_package
from imgclf.server import ServerConfig, create_app


class SlowEngine:
    """The tiny model, but every batch takes ``seconds`` (like a big model on a busy CPU)."""

    def __init__(self, inner: OnnxEngine, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds
        self.labels, self.spec, self.name = inner.labels, inner.spec, "slow"
        self.version, self.output_kind = inner.version, inner.output_kind
        self.engine_name, self.precision = inner.engine_name, inner.precision
        self.rows_run = 0
        self.armed = threading.Event()  # slow only once the warm-up is over
        self.running = threading.Event()  # set once a slow batch has started

    def logits(self, batch):
        if self.armed.is_set():
            self.running.set()
            time.sleep(self.seconds)
            self.rows_run += len(batch)
        return self.inner.logits(batch)

    def probabilities(self, batch):
        return to_probabilities(self.logits(batch), self.output_kind)

    def warmup(self, batch_sizes=(1,)):
        for n in batch_sizes:
            self.logits(np.zeros((n, self.spec.channels, self.spec.input_size, self.spec.input_size), np.float32))


def serve_slow(serve_model_dir, seconds: float, **config):
    app = create_app(ServerConfig(models=(str(serve_model_dir / "tiny"),), **config))
    client = TestClient(app)
    client.__enter__()
    wait_ready(client)
    engine = SlowEngine(OnnxEngine(load_package(serve_model_dir / "tiny")), seconds)
    registry = app.state.imgclf.registry
    client.portal.call(functools.partial(registry.add_engine, engine, name="slow"))
    engine.armed.set()
    return client, engine


@pytest.fixture(scope="module")
def jpg():
    from skimage import data

    return jpeg_bytes(data.chelsea())


def test_full_queue_answers_429_with_retry_after(serve_model_dir, jpg):
    client, engine = serve_slow(serve_model_dir, 0.5, max_batch_size=1, queue_size=2)
    finished: list[int] = []
    lock = threading.Lock()

    def one(_):
        r = client.post("/v1/models/slow/predict", content=jpg, headers={"Content-Type": "image/jpeg"})
        with lock:
            finished.append(r.status_code)
        return r

    try:
        with ThreadPoolExecutor(8) as pool:
            # The first request must be running before the burst, or it could still hold a
            # queue slot when the other seven arrive.
            first = pool.submit(one, 0)
            assert engine.running.wait(10)
            responses = [first.result(), *pool.map(one, range(1, 8))]
    finally:
        client.__exit__(None, None, None)
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 3  # one running plus a full queue of two
    for r in responses:
        if r.status_code == 429:
            assert_error(r, 429, "queue_full")
            assert int(r.headers["Retry-After"]) >= 1
    # Refusals come back while the admitted requests are still waiting for the slow engine.
    assert finished.index(429) < max(i for i, s in enumerate(finished) if s == 200)


def test_request_bigger_than_the_queue_is_413_not_a_hang(serve_model_dir, jpg):
    import base64

    client, _ = serve_slow(serve_model_dir, 0.5, max_batch_size=1, queue_size=1)
    body = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                        "data": [base64.b64encode(jpg).decode()] * 2}]}
    try:
        r = client.post("/v2/models/slow/infer", json=body)  # two images never fit a queue of one
    finally:
        client.__exit__(None, None, None)
    assert_error(r, 413, "too_many_images")


def test_slow_request_answers_504_and_its_work_is_dropped(serve_model_dir, jpg):
    client, engine = serve_slow(serve_model_dir, 1.0, max_batch_size=1, request_timeout_s=0.3)
    try:
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(
                lambda _: client.post("/v1/models/slow/predict", content=jpg,
                                      headers={"Content-Type": "image/jpeg"}), range(3)))
        for r in responses:
            err = assert_error(r, 504, "timeout")
            assert "0.3 s" in err["message"]
        time.sleep(1.2)  # let the batch already inside the engine finish
        # Only what had reached the engine ran; the timed-out queued rows were dropped.
        assert engine.rows_run < 3
        metrics = client.get("/metrics").text
        assert 'status="504"' in metrics
    finally:
        client.__exit__(None, None, None)
