"""Keep a thread's alternate signal stack valid across OpenVINO's model building and release.

OpenVINO's CPU plugin installs an alternate signal stack on the thread that compiles a model and,
when that model is released, puts back the stack it found there. Two models released in another
order than they were built (comparing two engines, a reload in the server) leave the thread on the
freed stack of the first one, and the next signal Python handles there (SIGINT, SIGTERM: Python's
handlers run on the alternate stack) crashes the process. Saving the thread's stack before a build
or a release and putting it back afterwards keeps it valid.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SS_DISABLE = 2  # <signal.h> on Linux


class StackT(ctypes.Structure):
    """``stack_t`` of ``sigaltstack(2)``."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


LIBC = _libc()


def current() -> tuple[int, int, int]:
    """The calling thread's alternate signal stack: ``(address, flags, size)``."""
    st = StackT()
    if LIBC is None or LIBC.sigaltstack(None, ctypes.byref(st)) != 0:
        return (0, SS_DISABLE, 0)
    return (st.ss_sp or 0, st.ss_flags, st.ss_size)


@contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the block, then give the calling thread back the alternate signal stack it had."""
    if LIBC is None:
        yield
        return
    saved = StackT()
    if LIBC.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        flags = SS_DISABLE if saved.ss_flags & SS_DISABLE else 0
        LIBC.sigaltstack(ctypes.byref(StackT(saved.ss_sp, flags, saved.ss_size)), None)
