"""Connecting to Ray: a cluster at an address, or a local instance started for the job and stopped after.

Ray is an optional extra (``pip install 'imgclf[ray]'``); it is imported here, on first use, so
the core install and ``imgclf --help`` never load it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from imgclf.errors import UserError


class RayMissingError(UserError):
    """Ray is not installed."""


class RayConnectError(UserError):
    """No Ray cluster answers at the address given."""


def import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate extra of Ray
    except ImportError:
        raise RayMissingError("--ray needs Ray Data: pip install 'imgclf[ray]'") from None
    return ray


def local_cpus(workers: int, threads: int) -> int:
    """Logical CPUs for a local instance: the machine's, and at least one decode task beside the workers
    (otherwise the actors hold every CPU and the decode stage never runs)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(cpus, workers * threads + 1)


@contextmanager
def connected(address: str | None, *, num_cpus: int) -> Iterator[ModuleType]:
    """Ray, initialised: joined to ``address`` (a cluster, ``ray://host:10001`` or ``auto``), else a
    local instance of ``num_cpus`` CPUs. A Ray already initialised in this process is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # Errors only: a local instance otherwise greets with start-up notes on every run. Workers' own
    # output (a traceback in an actor) still reaches the terminal.
    if address:
        check_reachable(address)
    quiet = {"logging_level": logging.ERROR, "log_to_driver": True}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RayConnectError(f"cannot start or join {where}: {first}") from None
    try:
        quiet_data(ray)
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once a ``HOST:PORT`` (or ``ray://HOST:PORT``) nothing listens on: Ray itself retries
    such an address for minutes before it gives up."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():  # "auto", or a form Ray resolves itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayConnectError(f"no Ray cluster answers at {address}: {exc.strerror or exc}") from None


def quiet_data(ray: ModuleType) -> None:
    """Ray Data's own progress bars and per-dataset log lines off: the job prints one progress bar."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
