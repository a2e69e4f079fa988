"""What every engine derives from its ``logits``: probabilities and warm-up, written once."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from imgclf.engines.outputs import Array, to_probabilities
from imgclf.package import OutputKind
from imgclf.preprocess import PreprocessSpec


class LogitsEngine:
    """Base of the engines: a subclass sets ``spec`` and ``output_kind`` and implements ``logits``."""

    spec: PreprocessSpec
    output_kind: OutputKind

    def logits(self, batch: Array) -> Array:
        raise NotImplementedError

    def probabilities(self, batch: Array) -> Array:
        return to_probabilities(self.logits(batch), self.output_kind)

    def warmup(self, batch_sizes: Iterable[int] = (1,)) -> None:
        # The first run at a batch shape allocates the runtime's buffers for it.
        s = self.spec
        for n in batch_sizes:
            self.logits(np.zeros((n, s.channels, s.input_size, s.input_size), np.float32))
