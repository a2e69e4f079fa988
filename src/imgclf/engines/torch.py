"""In-process torch engine: zoo models by name and training checkpoints, same interface as ONNX."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from imgclf.engines.base import LogitsEngine
from imgclf.engines.outputs import Array
from imgclf.package import OutputKind
from imgclf.preprocess import PreprocessSpec


class TorchEngine(LogitsEngine):
    engine_name = "torch"
    precision = "fp32"

    def __init__(self, model: torch.nn.Module, *, name: str, labels: Iterable[str], spec: PreprocessSpec,
                 version: str = "1", output_kind: OutputKind = "logits") -> None:
        self.model = model.eval()
        self.name = name
        self.version = version
        self.labels = list(labels)
        self.spec = spec
        self.output_kind: OutputKind = output_kind

    @torch.inference_mode()
    def logits(self, batch: Array) -> Array:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        out: Array = self.model(x).float().numpy()
        return out

