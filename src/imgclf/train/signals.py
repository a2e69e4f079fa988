"""Ctrl-C and SIGTERM during training: the first asks for a clean stop, the second aborts.

While :class:`StopOnSignal` is active, SIGINT or SIGTERM sets :attr:`StopOnSignal.requested`; the
trainer checks it after every step, saves ``last.pt`` and returns with ``stopped="interrupted"``.
A second signal raises ``KeyboardInterrupt`` at once. Outside the main thread (where Python
cannot install handlers) it does nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any


class StopOnSignal:
    def __init__(self, *, announce: bool = True) -> None:
        self.announce = announce  # print what happens (rank 0 only)
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
