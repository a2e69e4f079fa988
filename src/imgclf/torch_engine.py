"""In-process torch backend with the same interface as :class:`imgclf.engine.OnnxEngine`."""

from __future__ import annotations

import numpy as np
import torch

from imgclf.engine import softmax
from imgclf.preprocess import PreprocessSpec


class TorchEngine:
    def __init__(self, model: torch.nn.Module, *, name: str, labels: list[str], spec: PreprocessSpec,
                 version: str = "1", output_kind: str = "logits") -> None:
        self.model = model.eval()
        self.name = name
        self.version = version
        self.labels = list(labels)
        self.spec = spec
        self._is_probs = output_kind == "probabilities"

    @torch.inference_mode()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return self.model(x).float().numpy()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        out = self.logits(batch)
        return out if self._is_probs else softmax(out)

    def warmup(self) -> None:
        s = self.spec.input_size
        self.logits(np.zeros((1, self.spec.channels, s, s), np.float32))
