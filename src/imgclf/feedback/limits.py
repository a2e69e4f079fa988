"""What keeps one client from filling the disk: a per-client rate limit and the store's quota."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Quota:
    """The most the store may hold: image bytes and feedback records (None: no limit)."""

    max_bytes: int | None = 1024 * 1024 * 1024
    max_records: int | None = 100_000

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError("the feedback quota in bytes must be positive")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError("the feedback quota in records must be positive")


class RateLimiter:
    """A token bucket per client: ``per_minute`` a minute on average, ``burst`` at once.

    The table of clients is bounded (least recently seen clients are forgotten first), so a flood
    of addresses costs bounded memory; a forgotten client starts again with a full bucket.
    """

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("the rate limit needs a positive rate and a burst of at least 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        """Take one token for ``client``: 0.0 when allowed, else the seconds until one is free."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait
