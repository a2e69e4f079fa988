"""Inference backends behind one small interface.

:class:`OnnxEngine` runs a model package on ONNX Runtime (what the server uses; no torch).
:class:`TorchEngine` (in :mod:`imgclf.torch_engine`) runs an in-memory torch model with the same
interface, for ``imgclf predict --model <zoo name>`` and for evaluation of checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from imgclf.package import ModelPackage, PackageError
from imgclf.preprocess import PreprocessSpec


class Engine(Protocol):
    name: str
    labels: list[str]
    spec: PreprocessSpec

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """``(N, C, S, S)`` float32 -> ``(N, K)`` raw model output."""

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``(N, C, S, S)`` float32 -> ``(N, K)`` class probabilities."""


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "score": self.score}


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[list[Prediction]]:
    """Best ``k`` classes per row, highest score first (ties broken by lower index)."""
    k = max(1, min(int(k), probs.shape[1]))
    out = []
    for row in probs:
        idx = np.argsort(-row, kind="stable")[:k]
        out.append([Prediction(int(i), labels[i], round(float(row[i]), 6)) for i in idx])
    return out


def default_threads() -> int:
    """Intra-op threads: IMGCLF_THREADS, else the CPUs this process may use."""
    if os.environ.get("IMGCLF_THREADS"):
        return max(1, int(os.environ["IMGCLF_THREADS"]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OnnxEngine:
    """ONNX Runtime session over a model package, validated against its metadata at load."""

    def __init__(self, package: ModelPackage, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.package = package
        self.name = package.name
        self.version = package.meta.version
        self.labels = list(package.labels)
        self.spec = package.spec
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads burn the cores the HTTP and decode threads need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(package.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise PackageError(f"{package.onnx_path} cannot be loaded by ONNX Runtime: {str(exc).splitlines()[0]}") from None
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        meta = package.meta
        if meta.input_name not in names_in:
            raise PackageError(f"model.json names input {meta.input_name!r}, but model.onnx has {names_in}")
        if meta.output_name not in names_out:
            raise PackageError(f"model.json names output {meta.output_name!r}, but model.onnx has {names_out}")
        out_shape = next(o.shape for o in self.session.get_outputs() if o.name == meta.output_name)
        if isinstance(out_shape[-1], int) and out_shape[-1] != len(self.labels):
            raise PackageError(f"model.onnx has {out_shape[-1]} outputs but model.json lists {len(self.labels)} labels")
        self._input, self._output = meta.input_name, meta.output_name
        self._is_probs = meta.output_kind == "probabilities"

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        out = self.logits(batch)
        return out.astype(np.float32) if self._is_probs else softmax(out)

    def warmup(self) -> None:
        size = self.spec.input_size
        self.logits(np.zeros((1, self.spec.channels, size, size), np.float32))
