"""Graceful shutdown behind a load balancer: SIGTERM drains the replica before it exits.

On the first SIGTERM (or Ctrl-C) the replica turns not ready (``/v2/health/ready`` answers 503) and
keeps serving for ``shutdown_delay_s``, so a load balancer's health check takes it out of rotation
before its port closes. Then uvicorn stops accepting connections, lets requests in flight finish for
at most its ``timeout_graceful_shutdown``, and the app's shutdown drains the batchers. A second
signal stops the delay at once (a second Ctrl-C forces uvicorn's exit as usual).
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from imgclf.server.registry import ModelRegistry

log = logging.getLogger("imgclf.server")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, registry: ModelRegistry, *, shutdown_delay_s: float = 0.0) -> None:
        if shutdown_delay_s < 0:
            raise ValueError("the shutdown delay must not be negative")
        super().__init__(config)
        self.registry = registry
        self.shutdown_delay_s = shutdown_delay_s
        self._stop_at: float | None = None  # monotonic time the delay ends, once a signal came

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler: set flags only; the event loop acts on them in on_tick.
        self.registry.draining = True
        if self._stop_at is None and self.shutdown_delay_s > 0:
            self._stop_at = time.monotonic() + self.shutdown_delay_s
            log.info("draining: not ready; the port closes in %.1f s", self.shutdown_delay_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and not self.should_exit and time.monotonic() >= self._stop_at:
            log.info("shutdown delay over: closing the port, finishing requests in flight")
            self.should_exit = True
        return await super().on_tick(counter)


def _exit_0(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def exit_quietly_on_sigterm() -> None:
    """SIGTERM outside uvicorn's own handling ends the process with status 0, not killed by the signal.

    uvicorn raises a signal it handled again once its graceful shutdown is over, under the handler
    that was there before it started: this one. A SIGTERM just before uvicorn takes over stops the
    process too, rather than being lost.
    """
    signal.signal(signal.SIGTERM, _exit_0)
