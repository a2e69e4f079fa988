"""Measured speed of every engine and precision of one package on this CPU: what ``auto`` ranks by.

The fixed ranking (:data:`imgclf.engines.choice.RANKING`) holds for most models, not all: ONNX
Runtime's int8 kernels are slower than its fp32 on EfficientNet-Lite0's depthwise convolutions and
faster on ResNet50's dense ones. So ``imgclf quantize`` times each candidate on batches of the
package's input size once it has gated the int8 variant, and records the table in the int8
package's ``model.json`` (``"speed"``) with the CPU it ran on. ``auto`` orders its candidates by
that table when it was measured on a CPU with the same signature (see
:func:`imgclf.engines.cpu.cpu_signature`), and by the fixed ranking otherwise.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgclf.engine import Engine

log = logging.getLogger("imgclf.engines")

BATCH = 16


def key(engine: str, precision: str) -> str:
    return f"{engine}/{precision}"


@dataclass(frozen=True)
class SpeedTable:
    """Images per second at batch ``batch`` for each ``engine/precision``, on CPU ``cpu``."""

    cpu: str
    batch: int
    images_per_s: Mapping[str, float] = field(default_factory=dict)
    measured_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "batch": self.batch, "measured_at": self.measured_at,
                "images_per_s": {k: round(v, 1) for k, v in self.images_per_s.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SpeedTable | None:
        """The table, or ``None`` when absent or malformed (it only orders candidates: a bad one is
        ignored, never fatal)."""
        if not d:
            return None
        try:
            speeds = {str(k): float(v) for k, v in dict(d["images_per_s"]).items()}
            return cls(cpu=str(d["cpu"]), batch=int(d["batch"]), images_per_s=speeds,
                       measured_at=str(d.get("measured_at", "")))
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed speed record in model.json")
            return None

    def order(self, candidates: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """``candidates`` fastest first by this table; those it has no figure for keep their
        relative order after the measured ones."""
        measured = [c for c in candidates if key(*c) in self.images_per_s]
        rest = [c for c in candidates if key(*c) not in self.images_per_s]
        return sorted(measured, key=lambda c: -self.images_per_s[key(*c)]) + rest


def time_engine(engine: Engine, size: int, channels: int = 3, *, batch: int = BATCH,
                min_seconds: float = 1.0, min_calls: int = 3) -> float:
    """Images per second of ``engine`` on random batches (one warm-up call, then at least
    ``min_calls`` calls and ``min_seconds``)."""
    x = np.random.default_rng(0).standard_normal((batch, channels, size, size)).astype(np.float32)
    engine.logits(x)
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        engine.logits(x)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def measure(builders: Mapping[tuple[str, str], Callable[[], Engine]], size: int, channels: int, cpu: str, *,
            batch: int = BATCH, min_seconds: float = 1.0) -> SpeedTable:
    """Time every candidate ``builders`` can make, one after another (a candidate that cannot be
    built here is left out)."""
    speeds = {}
    for (engine, precision), make in builders.items():
        try:
            built = make()
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run here is just not ranked
            log.info("speed of %s %s not measured: %s", engine, precision, exc)
            continue
        speeds[key(engine, precision)] = time_engine(built, size, channels, batch=batch, min_seconds=min_seconds)
        del built
    return SpeedTable(cpu, batch, speeds, _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
