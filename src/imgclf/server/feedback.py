"""The server's side of the feedback store: opened lazily, guarded, and fed from predictions.

The store opens on first use and again after a failure (at most every ``RETRY_S``), so a
database that is down when the server starts, or goes down later, costs feedback requests a 503
while predictions go on. Store calls block (SQLAlchemy, fsync): routes run them on a thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from imgclf import feedback
from imgclf.server.config import FeedbackSettings
from imgclf.server.errors import ApiError

if TYPE_CHECKING:
    from imgclf.feedback.store import FeedbackStore
    from imgclf.server.metrics import Metrics

log = logging.getLogger("imgclf.server")

RETRY_S = 5.0
# Counts of records by status are read from the store at most this often (a scrape costs one query).
COUNTS_TTL_S = 15.0
FEEDBACK_OFF = "this server does not take feedback: start it with imgclf serve --feedback"


def unavailable(message: str) -> ApiError:
    return ApiError(503, "feedback_unavailable", message, headers={"Retry-After": str(int(RETRY_S))})


def store_error(exc: Exception) -> ApiError:
    """A feedback store error as the HTTP answer it deserves."""
    from imgclf.feedback import errors as e

    if isinstance(exc, e.QuotaExceededError):
        return ApiError(507, "feedback_quota_exceeded", str(exc))
    if isinstance(exc, e.StorageFullError):
        return ApiError(503, "storage_full", str(exc), headers={"Retry-After": "60"})
    if isinstance(exc, e.StoreUnavailableError | e.StoreTooNewError):
        return unavailable(str(exc))
    if isinstance(exc, e.NotFoundError):
        return ApiError(404, "feedback_not_found", str(exc))
    return ApiError(400, "bad_request", str(exc))


class UploadCache:
    """Recent uploads by SHA-256, up to ``max_bytes`` in all (least recently used go first).

    Each entry is counted with :data:`ENTRY_OVERHEAD` besides its bytes (its key, the bytes object
    and the dictionary's node), so a flood of tiny images cannot hold several times ``max_bytes``.
    """

    ENTRY_OVERHEAD = 256

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, sha256: str, data: bytes) -> None:
        cost = len(data) + self.ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(sha256, None)
            self._size -= len(old) + self.ENTRY_OVERHEAD if old is not None else 0
            self._items[sha256] = data
            self._size += cost
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped) + self.ENTRY_OVERHEAD

    def get(self, sha256: str) -> bytes | None:
        with self._lock:
            data = self._items.get(sha256)
            if data is not None:
                self._items.move_to_end(sha256)
            return data


class FeedbackService:
    def __init__(self, settings: FeedbackSettings, metrics: Metrics) -> None:
        from imgclf.feedback.limits import RateLimiter

        self.settings = settings
        self.limiter = RateLimiter(settings.rate_per_minute, settings.burst)
        self.uploads = UploadCache(settings.keep_uploads_bytes)
        self._store: FeedbackStore | None = None
        self._failed_at = -RETRY_S
        self._error = ""
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._counts_at = -COUNTS_TTL_S
        self.received = Counter("imgclf_feedback_received", "Corrections stored by this process, by model, "
                                "version and verdict (right, wrong, or unstated: no prediction given)",
                                ["model", "version", "verdict"], registry=metrics.registry)
        metrics.registry.register(_RecordsCollector(self))

    @property
    def keeps_uploads(self) -> bool:
        return self.settings.keep_uploads_bytes > 0

    def store(self) -> FeedbackStore:
        """The open store (opening it on first use); a 503 while it cannot be opened. Blocks: call on a thread."""
        with self._lock:
            if self._store is not None:
                return self._store
            if not feedback.available():
                raise ApiError(501, "feedback_unsupported", f"the feedback store is not installed: {feedback.EXTRA_HINT}")
            if time.monotonic() - self._failed_at < RETRY_S:
                raise unavailable(self._error)
            from pathlib import Path

            from imgclf.feedback.limits import Quota
            from imgclf.feedback.store import FeedbackStore

            s = self.settings
            try:
                self._store = FeedbackStore.open(s.db_url, Path(s.store_dir) if s.store_dir else None,
                                                 Quota(max_bytes=s.max_bytes, max_records=s.max_records))
            except feedback.FeedbackError as exc:
                self._failed_at, self._error = time.monotonic(), str(exc)
                log.warning("feedback store: %s", exc)
                raise unavailable(str(exc)) from None
            log.info("feedback store open at %s", self._store.where)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Records by (model, version, status), at most ``COUNTS_TTL_S`` old; the last known on failure."""
        now = time.monotonic()
        if now - self._counts_at >= COUNTS_TTL_S:
            self._counts_at = now
            try:
                self._counts = self.store().counts()
            except (ApiError, feedback.FeedbackError) as exc:
                log.warning("feedback metrics: %s", getattr(exc, "message", exc))
        return self._counts


class _RecordsCollector:
    def __init__(self, service: FeedbackService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:  # prometheus_client collector protocol
        g = GaugeMetricFamily("imgclf_feedback_records", "Feedback records in the store by model, version and "
                              "review status", labels=["model", "version", "status"])
        for (model, version, status), n in sorted(self.service.counts().items()):
            g.add_metric([model, version, status], n)
        yield g
