"""In-process torch engine: zoo models by name and training checkpoints, same interface as ONNX."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from imgclf.engines.outputs import Array, to_probabilities
from imgclf.package import OutputKind
from imgclf.preprocess import PreprocessSpec


class TorchEngine:
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

    def probabilities(self, batch: Array) -> Array:
        return to_probabilities(self.logits(batch), self.output_kind)

    def warmup(self, batch_sizes: Iterable[int] = (1,)) -> None:
        s = self.spec
        for n in batch_sizes:
            self.logits(np.zeros((n, s.channels, s.input_size, s.input_size), np.float32))
