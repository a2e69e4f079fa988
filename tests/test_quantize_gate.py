"""Gate records in model.json, and the gate's arithmetic (no model needed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from imgclf.evaluation.gate import Comparison, GateError, compare, record_gate, verdict
from imgclf.package import GateRecord, PackageError, PackageMeta, load_package

RECORD = GateRecord(engine="onnxruntime", precision="int8", passed=True, images=2000, labelled=False,
                    top1_reference=None, top1=None, top1_agreement=99.4, top5_overlap=98.7,
                    data="2000 unlabelled photos", reason="", measured_at="2026-01-01T00:00:00+00:00")


@pytest.fixture()
def package_dir(tmp_path, lite0_package):
    out = tmp_path / "pkg"
    shutil.copytree(lite0_package, out)
    return out


def test_old_package_has_fp32_and_no_gates(lite0_package):
    raw = json.loads((lite0_package / "model.json").read_text())
    assert "precision" not in raw and "gates" not in raw
    meta = load_package(lite0_package).meta
    assert meta.precision == "fp32" and meta.gates == () and meta.gate_for("onnxruntime", "int8") is None
    # Written back, an fp32 package without gates is what it was.
    assert PackageMeta.from_dict(raw).to_dict() == raw


def test_precision_and_gates_round_trip(lite0_package):
    raw = json.loads((lite0_package / "model.json").read_text())
    raw["precision"] = "int8"
    raw["gates"] = [RECORD.to_dict()]
    meta = PackageMeta.from_dict(raw)
    assert meta.precision == "int8" and meta.gates == (RECORD,)
    assert meta.gate_for("onnxruntime", "int8") == RECORD and meta.gate_for("openvino", "int8") is None
    assert PackageMeta.from_dict(meta.to_dict()).to_dict() == meta.to_dict()


@pytest.mark.parametrize("bad", [{"precision": "int4"}, {"gates": {}}, {"gates": [{"engine": "x"}]},
                                 {"gates": [{**RECORD.to_dict(), "precision": "fp8"}]}])
def test_bad_precision_or_gates_are_package_errors(lite0_package, bad):
    raw = {**json.loads((lite0_package / "model.json").read_text()), **bad}
    with pytest.raises(PackageError):
        PackageMeta.from_dict(raw)


def test_record_gate_replaces_same_engine_and_precision_only(package_dir):
    record_gate(package_dir, RECORD)
    other = GateRecord(**{**RECORD.to_dict(), "engine": "openvino"})
    record_gate(package_dir, other)
    failed = GateRecord(**{**RECORD.to_dict(), "passed": False, "reason": "top-1 agrees on 80%"})
    record_gate(package_dir, failed)
    meta = load_package(package_dir).meta  # the onnx hash still matches: model.onnx untouched
    assert meta.gates == (other, failed)
    assert not any(p.name.startswith(".model.json") for p in package_dir.iterdir())
    raw = json.loads((package_dir / "model.json").read_text())
    assert raw["provenance"]["onnx_sha256"] and len(raw["gates"]) == 2


def test_compare_agreement_and_top5_overlap():
    rng = np.random.default_rng(0)
    ref = rng.random((10, 20)).astype(np.float32)
    assert compare(ref, ref) == (100.0, 100.0)
    cand = ref.copy()
    cand[0] = -cand[0]  # row 0: top-1 and every top-5 class change
    agree, overlap = compare(ref, cand)
    assert agree == pytest.approx(90.0) and overlap == pytest.approx(90.0)
    with pytest.raises(GateError):
        compare(ref, ref[:5])


def test_verdict_thresholds():
    assert verdict(Comparison(100, 100, 100, 90.0, 89.6), None) == ""
    assert "0.60 points below" in verdict(Comparison(100, 100, 100, 90.0, 89.4), None)
    assert verdict(None, Comparison(100, 99.0, 98.0)) == ""
    reason = verdict(None, Comparison(100, 81.0, 97.0))
    assert "81.00%" in reason and "top-5 overlap" in reason
