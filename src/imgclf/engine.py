"""The engine contract: what every inference backend offers, and how its output is read.

An :class:`Engine` takes a preprocessed batch ``(N, C, S, S)`` float32 and returns ``(N, K)``
scores for the model's ``K`` labels. Implementations live in :mod:`imgclf.engines`:
:class:`~imgclf.engines.onnxruntime.OnnxEngine` runs a model package on ONNX Runtime (what the
server uses; no torch) and :class:`~imgclf.engines.torch.TorchEngine` runs an in-memory torch
model (zoo names and training checkpoints); :class:`~imgclf.engines.openvino.OpenVINOEngine` runs a
package on OpenVINO (the ``openvino`` extra), and :mod:`imgclf.engines.choice` decides which
engine and precision run a package. Whether a model's raw output is logits or
probabilities is decided by :func:`to_probabilities` alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from imgclf.engines.onnxruntime import OnnxEngine, default_threads
from imgclf.engines.outputs import Array, softmax, to_probabilities
from imgclf.package import OutputKind
from imgclf.preprocess import PreprocessSpec

__all__ = ["Array", "Engine", "OnnxEngine", "OutputKind", "Prediction", "default_threads", "softmax",
           "to_probabilities", "top_k"]


class Engine(Protocol):
    """A loaded classifier: metadata plus batched inference. The server, evaluation, ``predict``
    and :class:`imgclf.Classifier` hold nothing more specific than this."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def engine_name(self) -> str:
        """The runtime: ``onnxruntime``, ``openvino`` or ``torch``."""
        ...

    @property
    def precision(self) -> str:
        """What it computes in: ``fp32``, ``bf16`` or ``int8``."""
        ...

    @property
    def spec(self) -> PreprocessSpec:
        """The preprocessing the model was trained with (the one spec of the model)."""
        ...

    @property
    def output_kind(self) -> OutputKind:
        """What :meth:`logits` returns: ``"logits"`` or already-softmaxed ``"probabilities"``."""
        ...

    def warmup(self, batch_sizes: Iterable[int] = (1,)) -> None:
        """Run a zero batch of each size once, so the first real request pays no set-up."""
        ...

    def logits(self, batch: Array) -> Array:
        """``(N, C, S, S)`` float32 -> ``(N, K)`` raw model output (see :attr:`output_kind`)."""
        ...

    def probabilities(self, batch: Array) -> Array:
        """``(N, C, S, S)`` float32 -> ``(N, K)`` class probabilities."""
        ...


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k answer: its index in the label list, its label and its probability."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, int | str | float]:
        return {"index": self.index, "label": self.label, "score": self.score}


def top_k(probs: npt.NDArray[np.floating], labels: Sequence[str], k: int) -> list[list[Prediction]]:
    """Best ``k`` classes per row, highest score first (ties broken by lower index)."""
    k = max(1, min(int(k), probs.shape[1]))
    out = []
    for row in probs:
        idx = np.argsort(-row, kind="stable")[:k]
        out.append([Prediction(int(i), labels[i], round(float(row[i]), 6)) for i in idx])
    return out
