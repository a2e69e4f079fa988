"""Helpers for the engine tests: an int8 variant of a package, made with ONNX Runtime's static
quantizer (QDQ, per-channel weights, calibrated on the sample photos) so these tests do not depend
on how ``imgclf quantize`` chooses its settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from imgclf.package import META_FILE, MODEL_FILE, load_package, sha256_file
from imgclf.preprocess import preprocess
from imgclf.samples import sample_photos


def make_int8_variant(fp32_dir: Path, gates: list[dict] | None = None) -> Path:
    """Write ``fp32_dir/int8`` (model.json ``"precision": "int8"``) once; return its path."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    out = fp32_dir / "int8"
    if (out / MODEL_FILE).exists():
        return out
    package = load_package(fp32_dir)
    batch = np.stack([preprocess(a, package.spec) for a in sample_photos().values()])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{package.meta.input_name: batch[i:i + 1]} for i in range(len(batch))])

        def get_next(self):
            return next(self.rows, None)

    tmp = fp32_dir / ".int8-tmp"
    tmp.mkdir(exist_ok=True)
    quantize_static(str(package.onnx_path), str(tmp / MODEL_FILE), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    raw = json.loads((fp32_dir / META_FILE).read_text())
    raw["precision"] = "int8"
    raw["gates"] = gates or []
    raw["provenance"]["onnx_sha256"] = sha256_file(tmp / MODEL_FILE)
    (tmp / META_FILE).write_text(json.dumps(raw, indent=2))
    tmp.rename(out)
    return out


def copy_package(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns("int8", ".*")))
