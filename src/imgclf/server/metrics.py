"""Prometheus metrics, in a registry of the app's own (several apps can live in one process)."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Throughput:
    """Images per second per model over a sliding window, computed when scraped."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._events: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def add(self, model: str, n: int) -> None:
        with self._lock:
            self._events[model].append((time.monotonic(), n))

    def rates(self) -> dict[str, float]:
        now = time.monotonic()
        out = {}
        with self._lock:
            for model, events in self._events.items():
                while events and events[0][0] < now - self.window_s:
                    events.popleft()
                out[model] = sum(n for _, n in events) / self.window_s
        return out

    def collect(self) -> Iterator[Metric]:  # prometheus_client collector protocol
        g = GaugeMetricFamily("imgclf_images_per_second", f"Images classified per second over the last "
                              f"{self.window_s:.0f} s", labels=["model"])
        for model, rate in self.rates().items():
            g.add_metric([model], rate)
        yield g


class _Collector:
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.collect = collect


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("imgclf_requests", "HTTP requests by model, endpoint and status",
                                ["model", "endpoint", "status"], registry=r)
        self.errors = Counter("imgclf_errors", "Error responses by model, endpoint, status and error code",
                              ["model", "endpoint", "status", "code"], registry=r)
        self.latency = Histogram("imgclf_request_latency_seconds", "Inference request latency, end to end",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("imgclf_queue_time_seconds", "Time an image waited for its batch",
                                    ["model"], buckets=QUEUE_BUCKETS, registry=r)
        self.inference_time = Histogram("imgclf_inference_seconds", "ONNX Runtime time per batch",
                                        ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("imgclf_batch_size", "Images per ONNX Runtime call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.images = Counter("imgclf_images", "Images classified", ["model"], registry=r)
        self.version_images = Counter("imgclf_version_images", "Images classified by model and version",
                                      ["model", "version"], registry=r)
        self.throughput = _Throughput()
        r.register(self.throughput)
        self._depths: Callable[[], dict[str, int]] = dict
        self._engines: Callable[[], dict[str, tuple[str, str]]] = dict
        r.register(_Collector(self._collect_models))

    def watch_queues(self, depths: Callable[[], dict[str, int]]) -> None:
        """``depths()`` gives the loaded models and their queue depths at scrape time."""
        self._depths = depths

    def watch_engines(self, engines: Callable[[], dict[str, tuple[str, str]]]) -> None:
        """``engines()`` gives each loaded model's (engine, precision) at scrape time."""
        self._engines = engines

    def _collect_models(self) -> Iterator[Metric]:
        depths = self._depths()
        loaded = GaugeMetricFamily("imgclf_models_loaded", "Models loaded and warmed up")
        loaded.add_metric([], len(depths))
        yield loaded
        g = GaugeMetricFamily("imgclf_queue_depth", "Images admitted and not yet batched", labels=["model"])
        for model, depth in depths.items():
            g.add_metric([model], depth)
        yield g
        info = GaugeMetricFamily("imgclf_model_engine_info", "The engine and precision each model runs on (always 1)",
                                 labels=["model", "engine", "precision"])
        for model, (engine, precision) in self._engines().items():
            info.add_metric([model, engine, precision], 1)
        yield info

    def on_batch(self, model: str, version: str = "") -> Callable[[int, list[float], float], None]:
        """The batcher's callback for one loaded version of ``model``."""
        queue_time = self.queue_time.labels(model)
        inference = self.inference_time.labels(model)
        batch_size = self.batch_size.labels(model)
        images = self.images.labels(model)
        version_images = self.version_images.labels(model, version)

        def record(size: int, waits: list[float], seconds: float) -> None:
            for w in waits:
                queue_time.observe(w)
            inference.observe(seconds)
            batch_size.observe(size)
            images.inc(size)
            version_images.inc(size)
            self.throughput.add(model, size)

        return record

    def render(self) -> bytes:
        return generate_latest(self.registry)
