"""Int8 quantization variants side by side, through the accuracy gate.

    python benchmarks/quantize_gate.py CIFAR10 --work runs/quant \\
        [--models efficientnet_lite0 mobilenet_v2] [--photos 2000] [--calibration 300] \\
        [--variants nncf-fast ort-minmax ...] [--packages runs/fast/package models/catdog]

CIFAR10 is CIFAR-10 as JPEG folders (``train/<class>``, ``test/<class>``). For each zoo model
(exported once into ``--work``), every variant quantizes it with ``--calibration`` photos drawn
from ``train/`` and is gated on ``--photos`` photos drawn from ``test/`` (upscaled by the decode
path's resize; never the calibration photos): top-1 agreement and top-5 overlap with fp32, per
engine. Each ``--packages`` package (trained or fine-tuned) is quantized with the default variant
and its default sources: its own training/validation split to calibrate, its test split to gate.
Prints a markdown table; ``--json`` also writes every record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from imgclf.engine import OnnxEngine, to_probabilities
from imgclf.evaluation.gate import compare, measure_gate
from imgclf.images import image_files
from imgclf.package import load_package
from imgclf.pipeline import prepare
from imgclf.quantize.build import quantize_package
from imgclf.quantize.calibration import bundled, from_folder
from imgclf.quantize.fixes import Fixes
from imgclf.quantize.sources import default_calibration, default_gate

VARIANTS: dict[str, tuple[str, Fixes]] = {
    "ort-minmax": ("onnxruntime", Fixes(bias_correction="none", keep_first_last=False, max_float_layers=0)),
    "ort-minmax-keep-first-last": ("onnxruntime", Fixes(bias_correction="none", keep_first_last=True, max_float_layers=0)),
    "nncf-no-bc": ("nncf", Fixes(bias_correction="none", keep_first_last=False, max_float_layers=0)),
    "nncf-fast-bc": ("nncf", Fixes(bias_correction="fast", keep_first_last=False, max_float_layers=0)),
    "nncf-fast-bc-keep-first-last": ("nncf", Fixes(bias_correction="fast", keep_first_last=True, max_float_layers=0)),
    "nncf-full-bc-keep-first-last": ("nncf", Fixes(bias_correction="full", keep_first_last=True, max_float_layers=0)),
    # imgclf quantize's default: the above with accuracy control (up to 8 layer groups back to float)
    "nncf-fast-bc-keep-first-last-ac8": ("nncf", Fixes(bias_correction="fast", keep_first_last=True, max_float_layers=8)),
}


class NoisyEngine:
    """The fp32 engine with uniform noise of +-``levels`` grey levels added to its input: how much
    top-1 moves under a perturbation smaller than JPEG rounding (the noise floor of agreement)."""

    def __init__(self, engine: OnnxEngine, levels: float) -> None:
        self.engine, self.rng = engine, np.random.default_rng(0)
        self.name, self.version, self.labels = engine.name, engine.version, engine.labels
        self.spec, self.output_kind = engine.spec, engine.output_kind
        self.step = levels * float(np.mean(engine.spec.scale / np.asarray(engine.spec.std)))

    def warmup(self, batch_sizes: object = (1,)) -> None:
        pass

    def logits(self, batch: np.ndarray) -> np.ndarray:
        noise = self.rng.uniform(-self.step, self.step, batch.shape).astype(np.float32)
        return self.engine.logits(batch + noise)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return to_probabilities(self.logits(batch), self.output_kind)


class CachedEngine:
    """An engine whose probabilities are computed once per distinct batch: every variant is gated
    against the same fp32 outputs without running fp32 again."""

    def __init__(self, engine: OnnxEngine) -> None:
        self.engine, self.cache = engine, {}
        self.name, self.version, self.labels = engine.name, engine.version, engine.labels
        self.spec, self.output_kind = engine.spec, engine.output_kind

    def warmup(self, batch_sizes: object = (1,)) -> None:
        pass

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.logits(batch)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        key = hashlib.sha256(np.ascontiguousarray(batch).tobytes()).hexdigest()
        if key not in self.cache:
            self.cache[key] = self.engine.probabilities(batch)
        return self.cache[key]


def confident_agreement(parent: OnnxEngine, candidate: object, inputs: np.ndarray, threshold: float = 0.5) -> str:
    """Top-1 agreement on the photos fp32 is confident about (top-1 probability >= threshold)."""
    ref = np.concatenate([parent.probabilities(inputs[i:i + 32]) for i in range(0, len(inputs), 32)])
    cand = np.concatenate([candidate.probabilities(inputs[i:i + 32])  # type: ignore[attr-defined]
                           for i in range(0, len(inputs), 32)])
    sure = ref.max(1) >= threshold
    if not sure.any():
        return "n/a"
    agree, _ = compare(ref[sure], cand[sure])
    return f"{agree:.2f}% of {int(sure.sum())}"


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def row(model: str, variant: str, record: object, seconds: float | None, confident: str = "") -> str:
    r = record.to_dict()  # type: ignore[attr-defined]
    top1 = "" if r["top1"] is None else f"{r['top1']:.2f}% / {r['top1_reference']:.2f}%"
    took = "" if seconds is None else f"{seconds:.0f} s"
    return (f"| {model} | {variant} | {r['engine']} | {r['images']} | {top1} | {r['top1_agreement']:.2f}% "
            f"| {r['top5_overlap']:.2f}% | {confident} | {'pass' if r['passed'] else 'FAIL'} | {took} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="CIFAR-10 as JPEG folders (train/, test/)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--models", nargs="*", default=["efficientnet_lite0", "mobilenet_v2"])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--photos", type=int, default=2000, help="gate photos drawn from test/")
    ap.add_argument("--calibration", type=int, default=300, help="calibration photos drawn from train/")
    ap.add_argument("--packages", nargs="*", default=[], type=Path, help="trained/fine-tuned packages")
    ap.add_argument("--shipped-calibration", action="store_true",
                    help="also quantize each zoo model with the default settings calibrated on the photos shipped "
                         "with imgclf (what 'imgclf quantize' does without --calibration)")
    ap.add_argument("--bf16", action="store_true", help="also gate OpenVINO at bf16 on the same photos")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    tests = image_files(args.data / "test")
    photos = sorted(random.Random(0).sample(tests, min(args.photos, len(tests))))
    calibration = from_folder(args.data / "train", args.calibration)
    lines = ["| model | variant | engine | images | top-1 int8 / fp32 | top-1 agreement | top-5 overlap "
             "| agreement where fp32 top-1 >= 0.5 | gate | quantize + gate |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    records = []
    for model in args.models:
        pkg_dir = args.work / model
        if not pkg_dir.is_dir():
            from imgclf.publish import export_zoo_model

            export_zoo_model(model, pkg_dir, allow_download=False)
        parent = load_package(pkg_dir)
        fp32 = CachedEngine(OnnxEngine(parent))
        inputs = np.stack([prepare(p.read_bytes(), parent.spec) for p in photos])
        for levels in (0.5,):
            noisy = NoisyEngine(fp32.engine, levels)
            record = measure_gate(fp32, noisy, labelled=None, photos=photos, engine="onnxruntime", precision="fp32")
            lines.append(row(model, f"fp32 + uniform noise of +-{levels} grey levels (not int8)", record, None,
                             confident_agreement(fp32, NoisyEngine(fp32.engine, levels), inputs)))
            log(lines[-1])
        if args.bf16:
            from imgclf.engines.openvino import OpenVINOEngine

            bf16 = OpenVINOEngine(parent, precision="bf16")
            record = measure_gate(fp32, bf16, labelled=None, photos=photos, engine="openvino", precision="bf16")
            lines.append(row(model, "bf16 (OpenVINO's inference precision, not int8)", record, None,
                             confident_agreement(fp32, bf16, inputs)))
            log(lines[-1])
        runs = [(v, *VARIANTS[v], calibration) for v in args.variants]
        if args.shipped_calibration:
            runs.append(("default (nncf-fast-bc-keep-first-last-ac8), shipped photos", "nncf", Fixes(), bundled()))
        for variant, backend, fixes, cal in runs:
            t = time.perf_counter()
            done = quantize_package(parent, cal, out=args.work / f"{model}-{variant.replace(', ', '-')}",
                                    photos=photos, backend=backend, fixes=fixes, reference=fp32, log=log)
            seconds = time.perf_counter() - t
            for record in done.gates:
                engine = OnnxEngine(done.package) if record.engine == "onnxruntime" else None
                confident = "" if engine is None else confident_agreement(fp32, engine, inputs)
                lines.append(row(model, variant, record, seconds, confident))
                records.append({"model": model, "variant": variant, **record.to_dict()})
                log(lines[-1])
    for pkg_dir in args.packages:
        parent = load_package(pkg_dir)
        labelled, gate_photos = default_gate(parent)
        t = time.perf_counter()
        done = quantize_package(parent, default_calibration(parent), out=args.work / f"{parent.name}-int8",
                                labelled=labelled, photos=gate_photos, log=log)
        seconds = time.perf_counter() - t
        for record in done.gates:
            lines.append(row(parent.name, "default (nncf-fast-bc-keep-first-last-ac8)", record, seconds))
            records.append({"model": parent.name, "variant": "default", **record.to_dict()})
            log(lines[-1])
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
