"""Accuracy control: the layers int8 hurts most go back to float until int8 meets its target.

After the plain int8 graph is built, NNCF's accuracy-aware quantization measures it on the
calibration images against the fp32 model. If it misses the target, NNCF ranks every quantized
layer group by how much putting it back in float recovers, and restores them one at a time (most
useful first) until the target is met or ``max_layers`` are restored. The target mirrors the
accuracy gate:

* labelled calibration images (a package's own validation or training split): top-1 accuracy
  within ``max_top1_drop`` points of fp32's;
* unlabelled ones (a folder, the shipped photos): top-1 agreement with fp32 of at least
  ``min_agreement`` percent and top-5 overlap of at least ``min_top5_overlap`` percent.

The calibration images only steer the choice; the gate is then measured on other images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from imgclf.evaluation.gate import DEFAULT_THRESHOLDS, GateThresholds

# Layers are ranked on the calibration images where int8 and fp32 differ most, at most this many:
# ranking runs every image once per quantized layer group, one image at a time.
RANKING_IMAGES = 100
VALIDATION_BATCH = 32


@dataclass(frozen=True)
class Target:
    """What the int8 model must reach on the calibration images, and what to compare with."""

    reference: npt.NDArray[np.float32]  # fp32 logits or probabilities, (N, classes)
    labels: npt.NDArray[np.int64] | None  # true class per image in the model's label order, or None
    thresholds: GateThresholds = DEFAULT_THRESHOLDS

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.reference):
            raise ValueError("one label per calibration image is needed")

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def max_drop(self) -> float:
        """NNCF's absolute drop allowed from the fp32 metric (a fraction, as the metric is)."""
        t = self.thresholds
        return t.max_top1_drop / 100 if self.labelled else 1 - t.min_agreement / 100

    def per_item(self, index: int, logits: npt.NDArray[np.float32]) -> tuple[float, float]:
        """(top-1 right or agreeing, top-5 overlap) of one image's candidate output."""
        top1 = int(np.argmax(logits))
        if self.labels is not None:
            return float(top1 == int(self.labels[index])), 1.0
        ref = self.reference[index]
        k = min(5, len(ref))
        shared = set(np.argsort(-ref, kind="stable")[:k].tolist()) & set(np.argsort(-logits, kind="stable")[:k].tolist())
        return float(top1 == int(np.argmax(ref))), len(shared) / k

    def metric(self, items: Sequence[tuple[float, float]]) -> float:
        """The one number NNCF keeps within ``max_drop`` of fp32's: accuracy when labelled; else
        agreement, or overlap shifted so that both thresholds map onto the same drop."""
        if not items:
            return 0.0
        top1 = float(np.mean([a for a, _ in items]))
        if self.labelled:
            return top1
        t = self.thresholds
        overlap = float(np.mean([o for _, o in items])) + (t.min_agreement - t.min_top5_overlap) / 100
        return min(top1, overlap)


class _Sessions:
    """One ONNX Runtime session per candidate graph: NNCF calls the validation function once per
    image while ranking, with the same model object, and a session costs more than an image."""

    def __init__(self) -> None:
        self.model: Any = None
        self.session: Any = None

    def get(self, model: Any) -> Any:  # noqa: ANN401 - an onnx.ModelProto and an InferenceSession
        if model is not self.model:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            self.model = model
        return self.session


def validation_function(target: Target, input_name: str) -> Any:  # noqa: ANN401 - NNCF's callable
    """The ``validation_fn`` NNCF calls as ``fn(model, items)``: the metric and each image's value.
    Items are ``(index, input)`` pairs so every image is compared with its own reference."""
    sessions = _Sessions()

    def validate(model: Any, items: Iterable[tuple[int, npt.NDArray[np.float32]]]) -> tuple[float, list[float]]:  # noqa: ANN401
        pairs = list(items)
        if not pairs:
            return 0.0, []
        session = sessions.get(model)
        indices, inputs = [i for i, _ in pairs], [x for _, x in pairs]
        scored: list[tuple[float, float]] = []
        # Ranking hands over every ranking image in one call: run them in batches, not one by one.
        for start in range(0, len(inputs), VALIDATION_BATCH):
            batch = np.concatenate(inputs[start:start + VALIDATION_BATCH])
            logits = np.asarray(session.run(None, {input_name: batch})[0], np.float32)
            scored += [target.per_item(int(i), out) for i, out in zip(indices[start:start + VALIDATION_BATCH],
                                                                       logits, strict=True)]
        return target.metric(scored), [(a + o) / 2 for a, o in scored]

    return validate


def achieved(target: Target, model_path: str, input_name: str, inputs: npt.NDArray[np.float32]) -> str:
    """How the written int8 model measures against ``target`` on the calibration inputs (a log line)."""
    import onnx

    validate = validation_function(target, input_name)
    metric, _ = validate(onnx.load(model_path), [(i, inputs[i:i + 1]) for i in range(len(inputs))])
    base = target.metric([target.per_item(i, target.reference[i]) for i in range(len(inputs))])
    what = "top-1 accuracy" if target.labelled else "agreement with fp32"
    verdict = "met" if base - metric <= target.max_drop + 1e-9 else "NOT met"
    return (f"on the {len(inputs)} calibration images: int8 {what} {100 * metric:.2f}% against fp32's "
            f"{100 * base:.2f}%: target {verdict}")


def quantize_with_accuracy_control(model: Any, inputs: npt.NDArray[np.float32], target: Target, *,  # noqa: ANN401
                                   input_name: str, max_layers: int, quantize_kwargs: dict[str, Any]) -> Any:  # noqa: ANN401
    """NNCF's accuracy-aware quantization of ``model`` (an onnx.ModelProto), calibrated and
    validated on ``inputs``; at most ``max_layers`` layer groups are restored to float."""
    import importlib

    nncf = importlib.import_module("nncf")  # the quantize extra; the caller has checked it is there
    items = [(i, inputs[i:i + 1]) for i in range(len(inputs))]
    calibration = nncf.Dataset(items, lambda item: {input_name: item[1]})
    validation = nncf.Dataset(items)
    return nncf.quantize_with_accuracy_control(
        model, calibration, validation, validation_function(target, input_name), max_drop=target.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
            max_num_iterations=max_layers, ranking_subset_size=min(len(items), RANKING_IMAGES)),
        **quantize_kwargs)
