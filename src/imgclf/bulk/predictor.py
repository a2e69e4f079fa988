"""The inference stage of a bulk job: a Ray Data actor holding one engine over a model package.

The package arrives as its files (:mod:`imgclf.bulk.shipping`: a cluster's nodes do not share the
driver's folders) and is unpacked on the actor's node. The engine comes from one call,
``make_engine(package_dir, threads)``: :func:`onnx_engine` by default, so another runtime is one
factory away. Each actor bounds its intra-op threads, so
``workers x threads`` is what a node's cores are asked for. Rows whose file failed to decode pass
through with their error and ``-1`` indices; they never reach the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from imgclf.bulk.shipping import PackageFiles, unpack
from imgclf.engine import Engine, top_k
from imgclf.preprocess import normalize

Batch = dict[str, npt.NDArray[Any]]
EngineFactory = Callable[[str, int], Engine]


def onnx_engine(package_dir: str, threads: int) -> Engine:
    """ONNX Runtime over the package in ``package_dir`` with ``threads`` intra-op threads."""
    from imgclf.engines.onnxruntime import OnnxEngine
    from imgclf.package import load_package

    return OnnxEngine(load_package(package_dir), threads=threads)


@dataclass(frozen=True)
class ChosenEngine:
    """The factory for ``--engine``/``--precision``: the engine and precision are chosen once on the
    driver (:func:`imgclf.engines.choice.choose`, gates included) and every actor builds that one;
    the driver ships the package the choice runs (the int8 variant for int8)."""

    engine: str
    precision: str

    def __call__(self, package_dir: str, threads: int) -> Engine:
        from imgclf.engines.choice import EngineChoice, build
        from imgclf.package import load_package

        return build(EngineChoice(self.engine, self.precision, "chosen on the driver", load_package(package_dir)),
                     threads=threads)


class Predictor:
    """``{"path", "pixels", "error"}`` -> ``{"path", "indices", "scores", "error"}`` (top-k per row)."""

    def __init__(self, package: PackageFiles, k: int, threads: int, make_engine: EngineFactory = onnx_engine) -> None:
        self.engine = make_engine(str(unpack(package)), threads)
        self.k = max(1, min(k, len(self.engine.labels)))

    def __call__(self, batch: Batch) -> Batch:
        errors = np.asarray([str(e) for e in batch["error"]], dtype=object)
        n = len(errors)
        indices = np.full((n, self.k), -1, np.int64)
        scores = np.zeros((n, self.k), np.float64)
        good = np.flatnonzero(errors == "")
        if good.size:
            # The rest of imgclf.pipeline.prepare: the decode stage sent the spec's uint8 pixels.
            inputs = normalize(np.asarray(batch["pixels"][good]), self.engine.spec)
            answers = top_k(self.engine.probabilities(inputs), self.engine.labels, self.k)
            for row, preds in zip(good, answers, strict=True):
                indices[row] = [p.index for p in preds]
                scores[row] = [p.score for p in preds]
        return {"path": np.asarray(batch["path"], dtype=object), "indices": indices, "scores": scores,
                "error": errors}
