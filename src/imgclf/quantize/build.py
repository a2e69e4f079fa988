"""Quantize a package: calibrate, write the int8 package, measure its accuracy gate, record it.

The int8 package is a full package (same labels, preprocessing, input and output names) whose
``model.json`` says ``"precision": "int8"`` and whose provenance names its parent (name, version,
ONNX sha256), the calibration manifest and the quantization settings. Its gate records (one per
engine that ran it) are written into the same ``model.json``. A package that misses its gate is
written all the same, marked ``"passed": false`` with the reason; ``auto`` never serves it.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imgclf.engine import Engine, OnnxEngine
from imgclf.evaluation.gate import (
    DEFAULT_THRESHOLDS,
    GateThresholds,
    LabelledSplit,
    measure_gate,
    record_gate,
)
from imgclf.package import (
    GateRecord,
    ModelPackage,
    PackageMeta,
    is_package_dir,
    load_package,
    update_meta,
    write_package,
)
from imgclf.quantize.accuracy import Target, achieved
from imgclf.quantize.calibration import BUNDLED_SOURCE, CalibrationSet
from imgclf.quantize.fixes import DEFAULT_FIXES, Fixes
from imgclf.quantize.quantizer import QuantizeError, QuantizeResult, quantize_onnx

INT8_DIR = "int8"


@dataclass(frozen=True)
class Quantized:
    package: ModelPackage
    result: QuantizeResult
    gates: tuple[GateRecord, ...]

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(g.passed for g in self.gates)


def default_out(package: ModelPackage) -> Path:
    """The int8 package nests in its parent: ``PACKAGE/int8``."""
    return package.path / INT8_DIR


def int8_meta(parent: ModelPackage, calibration: CalibrationSet, result: QuantizeResult) -> PackageMeta:
    """The int8 package's metadata: the parent's (task and lineage unchanged: it is the same model),
    at int8, with the fp32 package it was made from, the calibration manifest and the settings."""
    meta = parent.meta
    prov = meta.provenance
    return replace(meta, precision="int8", gates=(), provenance=replace(
        prov, created=None, imgclf_version=None, onnx_sha256=None,
        extra={**dict(prov.extra),
               "quantized_from": {"name": meta.name, "version": meta.version, "onnx_sha256": prov.onnx_sha256},
               "quantization": result.to_dict(), "calibration": calibration.manifest()}))


def engines_to_gate() -> list[tuple[str, Callable[[ModelPackage], Engine]]]:
    """ONNX Runtime always; OpenVINO too when its engine is installed (records are per engine)."""
    out: list[tuple[str, Callable[[ModelPackage], Engine]]] = [("onnxruntime", OnnxEngine)]
    if importlib.util.find_spec("openvino") is not None:
        try:
            ov = importlib.import_module("imgclf.engines.openvino")
        except ImportError:  # this imgclf has no OpenVINO engine
            ov = None
        engine = getattr(ov, "OpenVINOEngine", None) or getattr(ov, "OpenVinoEngine", None)
        if engine is not None:
            out.append(("openvino", engine))
    return out


def quantize_package(parent: ModelPackage, calibration: CalibrationSet, *, out: Path | None = None,
                     labelled: LabelledSplit | None = None, photos: Sequence[Path] = (),
                     backend: str = "nncf", fixes: Fixes = DEFAULT_FIXES,
                     thresholds: GateThresholds = DEFAULT_THRESHOLDS, reference: Engine | None = None,
                     time_engines: bool = True, log: Callable[[str], None] = lambda _: None) -> Quantized:
    """Write the int8 form of ``parent`` at ``out`` (default ``PARENT/int8``), gate it against
    ``reference`` (default: ONNX Runtime on ``parent``) and, with ``time_engines``, record how fast
    each engine and precision runs it here (what ``auto`` ranks by)."""
    if labelled is None and not photos:
        raise QuantizeError("the accuracy gate needs a labelled split or photos; none given")
    if parent.meta.precision != "fp32":
        raise QuantizeError(f"{parent.path} is already {parent.meta.precision}; quantize the fp32 package")
    target = out or default_out(parent)
    if target.resolve() == parent.path.resolve() or target.resolve() in parent.path.resolve().parents:
        raise QuantizeError("--out must not be the package being quantized or a folder holding it")
    # write_package replaces its folder whole: only a package (an earlier int8 copy) may be replaced.
    if target.exists() and not is_package_dir(target) and (not target.is_dir() or any(target.iterdir())):
        raise QuantizeError(f"--out {target} exists and is not a model package; give a new or empty folder")
    views = f" x {calibration.views} views" if calibration.views > 1 else ""
    log(f"calibrating on {len(calibration)} image(s){views}: {calibration.description}")
    inputs = calibration.inputs(parent.spec)
    reference = reference or OnnxEngine(parent)
    # Accuracy control is NNCF's: the onnxruntime backend has none (its result records 0).
    steer = fixes.max_float_layers and backend == "nncf"
    goal = accuracy_target(reference, calibration, inputs, thresholds) if steer else None
    if goal is not None:
        log(f"accuracy control: up to {fixes.max_float_layers} layer group(s) back to float until int8 "
            + ("is within the gate's top-1 drop on the labelled calibration images" if goal.labelled
               else "agrees with fp32 as the gate asks on the calibration images"))
    with tempfile.TemporaryDirectory(prefix="imgclf-int8-") as tmp:
        onnx_int8 = Path(tmp) / "model.onnx"
        result = quantize_onnx(parent.onnx_path, onnx_int8, inputs, input_name=parent.meta.input_name,
                               backend=backend, fixes=fixes, target=goal)
        written = write_package(target, onnx_int8, int8_meta(parent, calibration, result))
    if goal is not None:
        log("accuracy control " + achieved(goal, str(written.onnx_path), parent.meta.input_name, inputs))
    log(f"wrote {written.path} ({result.int8_tensors} int8 tensors, {result.per_channel_weights} per-channel "
        f"weights, float: {', '.join(result.float_nodes) or 'none'})")
    records = []
    for name, make in engines_to_gate():
        log(f"accuracy gate, {name}: int8 vs fp32")
        record = measure_gate(reference, make(written), labelled=labelled, photos=photos, engine=name,
                              precision="int8", thresholds=thresholds)
        record_gate(written.path, record)
        records.append(record)
    if time_engines:
        from imgclf.engines.choice import measure_speed

        table = measure_speed(parent)
        update_meta(written.path, "speed", table.to_dict())
        log("speed at batch 16 on this CPU (what 'auto' ranks by): " + ", ".join(
            f"{k} {v:.0f} images/s" for k, v in sorted(table.images_per_s.items(), key=lambda kv: -kv[1])))
    return Quantized(load_package(written.path), result, tuple(records))


def default_max_float_layers(calibration: CalibrationSet) -> int:
    """Accuracy control's default for ``calibration``: off for the few photos shipped with imgclf
    (4 photos, too few to choose layers by: on them it cost Lite0 minutes and a held-out photo's
    top-1), on otherwise."""
    return 0 if calibration.source == BUNDLED_SOURCE else DEFAULT_FIXES.max_float_layers


def accuracy_target(reference: Engine, calibration: CalibrationSet, inputs: npt.NDArray[np.float32],
                    thresholds: GateThresholds) -> Target:
    """What accuracy control aims for on the calibration inputs: labelled when every calibration
    image has a class the model knows, else agreement with ``reference``'s outputs."""
    ref = np.concatenate([np.asarray(reference.logits(inputs[i:i + 32]), np.float32)
                          for i in range(0, len(inputs), 32)])
    labels = None
    names = list(reference.labels)
    if calibration.labels is not None and calibration.views == 1 and all(c in names for c in calibration.labels):
        labels = np.asarray([names.index(c) for c in calibration.labels], np.int64)
    return Target(ref, labels, thresholds)


def describe_gate(record: GateRecord) -> str:
    """One line per record for the terminal."""
    figures = f"top-1 agreement {record.top1_agreement:.2f}%, top-5 overlap {record.top5_overlap:.2f}%"
    if record.top1 is not None and record.top1_reference is not None:
        figures = f"top-1 {record.top1:.2f}% (fp32 {record.top1_reference:.2f}%), " + figures
    verdict = "passed" if record.passed else f"FAILED: {record.reason}"
    return f"gate {record.engine} int8 on {record.images} images: {figures}: {verdict}"

