"""The accuracy fixes: which layers stay in float, and how the int8 graph is corrected.

Measured on EfficientNet-Lite0 and MobileNetV2 (docs/benchmarks.md, "Int8 quantization and the
accuracy gate"): per-channel symmetric int8 weights alone leave depthwise-heavy networks well short
of the gate. What closes the gap is bias correction (the int8 error's mean per output channel,
measured on the calibration images, folded back into each layer's bias) and keeping the first
convolution (it sees raw pixels, whose range the stem's 3 input channels share badly) and the
classifier in float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Fixes:
    """The fixes applied to one quantization (recorded in the int8 package's provenance)."""

    bias_correction: str = "fast"  # "fast" (per layer, one pass), "full" (layer by layer, slower) or "none"
    keep_first_last: bool = True  # the first weighted layer and the classifier stay float
    keep: tuple[str, ...] = ()  # further node names to keep in float

    def to_dict(self) -> dict[str, object]:
        return {"bias_correction": self.bias_correction, "keep_first_last": self.keep_first_last,
                "keep": list(self.keep)}


BIAS_CORRECTIONS = ("fast", "full", "none")
DEFAULT_FIXES = Fixes()


def weighted_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes with weights, in graph (topological) order."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def float_nodes(model: onnx.ModelProto, fixes: Fixes) -> list[str]:
    """The node names ``fixes`` keeps in float: first and last weighted layer, plus ``fixes.keep``
    (which must all exist, so a typo is an error rather than a silently int8 layer)."""
    names = weighted_nodes(model)
    known = {n.name for n in model.graph.node}
    missing = [k for k in fixes.keep if k not in known]
    if missing:
        from imgclf.quantize.quantizer import QuantizeError

        raise QuantizeError(f"no node named {', '.join(missing)} in the model (see its ONNX graph)")
    keep: list[str] = []
    if fixes.keep_first_last and names:
        keep += [names[0]] + ([names[-1]] if len(names) > 1 else [])
    return _unique([*keep, *fixes.keep])


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))
