"""Reading a model's output: the one place that turns raw scores into class probabilities.

A package's ``model.json`` says whether its output is ``logits`` (softmax applied here) or already
``probabilities`` (used as they are); zoo and trained torch models give logits. The engines, the
server and evaluation all call :func:`to_probabilities`, so the rule lives nowhere else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from imgclf.package import OutputKind

OUTPUT_KINDS: tuple[OutputKind, ...] = ("logits", "probabilities")

# A batch in or out of an engine: float32 ``(N, C, S, S)`` in, ``(N, K)`` out.
Array = npt.NDArray[np.float32]


def softmax(x: npt.NDArray[Any]) -> Array:
    """Row-wise softmax in float64 (no overflow for large logits), returned as float32."""
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    probs: Array = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return probs


def to_probabilities(outputs: npt.NDArray[Any], kind: OutputKind) -> Array:
    """``(N, K)`` raw model outputs of the given kind -> ``(N, K)`` float32 probabilities."""
    if kind == "probabilities":
        return outputs.astype(np.float32, copy=False)
    if kind == "logits":
        return softmax(outputs)
    raise ValueError(f"output kind must be one of {OUTPUT_KINDS}, got {kind!r}")
