"""The accuracy fixes: which layers stay in float, and how the int8 graph is corrected.

Measured on EfficientNet-Lite0 and MobileNetV2 (docs/benchmarks.md, "Int8 quantization and the
accuracy gate"): against ONNX Runtime's MinMax quantizer with the same per-channel symmetric
weights, NNCF with fast bias correction (the mean error each int8 layer adds, measured on the
calibration images, folded back into its bias) raises top-1 agreement with fp32, and keeping the
first convolution (raw pixels in) and the classifier in float raises it again. On low-confidence
photos none of them reaches the gate's 99%.
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
    # Accuracy control (imgclf.quantize.accuracy): when int8 misses its target on the calibration
    # images, up to this many of the most sensitive layer groups go back to float (0: never).
    max_float_layers: int = 8

    def to_dict(self) -> dict[str, object]:
        return {"bias_correction": self.bias_correction, "keep_first_last": self.keep_first_last,
                "keep": list(self.keep), "max_float_layers": self.max_float_layers}


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
        # A layer whose weight is shared (a test-time-augmentation branch of an exported graph)
        # stays float with every node that reads the same weight: one int8 reader would quantize it.
        weight_of = {n.name: n.input[1] for n in model.graph.node if n.name in names and len(n.input) > 1}
        shared = {weight_of[k] for k in keep if k in weight_of}
        keep += [n for n in names if weight_of.get(n) in shared]
    return _unique([*keep, *fixes.keep])


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))
