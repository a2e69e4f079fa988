"""Which engine and precision run a package: ``auto`` against gate records, CPU capabilities and the
OpenVINO extra, the one-line refusals, and the missing-extra error (no OpenVINO needed here)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from imgclf.engines import choice as choice_mod
from imgclf.engines.choice import EngineChoiceError, choose, precheck
from imgclf.engines.cpu import CpuCaps, caps_from_flags, read_flags
from imgclf.engines.openvino import OpenVINOMissingError
from imgclf.errors import UserError
from imgclf.package import GateRecord, load_package
from imgclf.resolve import package_engine_args
from imgclf.server import ServerConfig

FAST = CpuCaps(bf16=True, int8=True)
PLAIN = CpuCaps(bf16=False, int8=False)


def gate(engine: str, precision: str, passed: bool = True) -> GateRecord:
    return GateRecord(engine=engine, precision=precision, passed=passed, images=5, labelled=False,
                      top1_reference=None, top1=None, top1_agreement=100.0 if passed else 60.0,
                      top5_overlap=100.0 if passed else 70.0, data="5 unlabelled photos",
                      reason="" if passed else "top-1 agrees with fp32 on 60.00% of photos (needed: 99.0%)",
                      measured_at="2026-01-01T00:00:00+00:00")


def write_gates(package_dir: Path, *records: GateRecord, precision: str | None = None) -> None:
    meta_file = package_dir / "model.json"
    raw = json.loads(meta_file.read_text())
    raw["gates"] = [r.to_dict() for r in records]
    if precision is not None:
        raw["precision"] = precision
    meta_file.write_text(json.dumps(raw))


@pytest.fixture
def package_dir(serve_model_dir, tmp_path) -> Path:
    """A copy of the tiny test package (its ONNX file is never run here: only model.json is read)."""
    return Path(shutil.copytree(serve_model_dir / "tiny", tmp_path / "tiny"))


def with_int8(package_dir: Path, *records: GateRecord) -> Path:
    """Give the package an int8 variant in int8/ carrying ``records``."""
    shutil.copytree(package_dir, package_dir / "int8", ignore=shutil.ignore_patterns("int8"))
    write_gates(package_dir / "int8", *records, precision="int8")
    return package_dir / "int8"


class Measure:
    """A bf16 gate measurement that answers ``passed`` and remembers what it was asked."""

    def __init__(self, passed: bool = True) -> None:
        self.passed, self.calls = passed, []

    def __call__(self, package, engine, precision):
        self.calls.append((engine, precision))
        return gate(engine, precision, self.passed)


def test_auto_measures_bf16_once_and_picks_it_when_it_passes(package_dir):
    measure = Measure()
    c = choose(load_package(package_dir), caps=FAST, openvino=True, measure=measure)
    assert (c.engine, c.precision) == ("openvino", "bf16")
    assert measure.calls == [("openvino", "bf16")]
    assert "no int8 variant" in c.reason and c.gate is not None and c.gate.passed


def test_auto_skips_a_failed_bf16_gate(package_dir):
    c = choose(load_package(package_dir), caps=FAST, openvino=True, measure=Measure(passed=False))
    assert (c.engine, c.precision) == ("openvino", "fp32")
    assert "accuracy gate failed" in c.reason


def test_a_recorded_bf16_gate_is_not_measured_again(package_dir):
    write_gates(package_dir, gate("openvino", "bf16", passed=False))
    measure = Measure()
    c = choose(load_package(package_dir), caps=FAST, openvino=True, measure=measure)
    assert measure.calls == [] and c.precision == "fp32"


def test_auto_picks_int8_only_with_a_passed_gate(package_dir):
    int8_dir = with_int8(package_dir, gate("openvino", "int8"), gate("onnxruntime", "int8"))
    c = choose(load_package(package_dir), caps=FAST, openvino=True, measure=Measure())
    assert (c.engine, c.precision) == ("openvino", "int8") and c.package.path == int8_dir

    write_gates(int8_dir, gate("openvino", "int8", passed=False), gate("onnxruntime", "int8"))
    c = choose(load_package(package_dir), caps=FAST, openvino=True, measure=Measure())
    assert (c.engine, c.precision) == ("onnxruntime", "int8")
    assert "openvino int8: accuracy gate failed" in c.reason

    write_gates(int8_dir)  # no gates at all: int8 is never picked unmeasured
    c = choose(load_package(package_dir), caps=FAST, openvino=True, measure=Measure())
    assert (c.engine, c.precision) == ("openvino", "bf16")
    assert "no accuracy gate recorded" in c.reason


def test_auto_picks_nothing_the_cpu_lacks(package_dir):
    with_int8(package_dir, gate("openvino", "int8"), gate("onnxruntime", "int8"))
    measure = Measure()
    c = choose(load_package(package_dir), caps=PLAIN, openvino=True, measure=measure)
    assert (c.engine, c.precision) == ("openvino", "fp32")
    assert measure.calls == []  # bf16 was not even measured
    assert "no bf16 instructions" in c.reason and "no int8 dot-product" in c.reason


def test_without_openvino_auto_stays_on_onnx_runtime(package_dir):
    with_int8(package_dir, gate("openvino", "int8"), gate("onnxruntime", "int8"))
    c = choose(load_package(package_dir), caps=FAST, openvino=False, measure=Measure())
    assert (c.engine, c.precision) == ("onnxruntime", "int8")
    plain = choose(load_package(package_dir), "auto", "fp32", caps=FAST, openvino=False)
    assert (plain.engine, plain.precision) == ("onnxruntime", "fp32")


def test_an_explicit_precision_runs_even_with_a_failed_gate(package_dir):
    with_int8(package_dir, gate("onnxruntime", "int8", passed=False))
    c = choose(load_package(package_dir), "onnxruntime", "int8", caps=FAST, openvino=False)
    assert (c.engine, c.precision) == ("onnxruntime", "int8") and "gate FAILED" in c.reason


def test_impossible_requests_are_one_line_errors(package_dir):
    package = load_package(package_dir)
    with pytest.raises(EngineChoiceError, match=r"run 'imgclf quantize .*tiny' first") as e:
        choose(package, "auto", "int8", caps=FAST, openvino=True)
    assert "\n" not in str(e.value)
    with pytest.raises(EngineChoiceError, match="ONNX Runtime has no bf16"):
        choose(package, "onnxruntime", "bf16", caps=FAST, openvino=True)
    with pytest.raises(EngineChoiceError, match="no bf16 instructions"):
        choose(package, "openvino", "bf16", caps=PLAIN, openvino=True)
    with pytest.raises(EngineChoiceError, match="--engine must be one of"):
        choose(package, "tensorrt", "fp32")
    with pytest.raises(EngineChoiceError, match="--precision must be one of"):
        choose(package, "auto", "fp16")
    int8_dir = with_int8(package_dir)
    with pytest.raises(EngineChoiceError, match="int8 package; it runs at int8 only"):
        choose(load_package(int8_dir), "onnxruntime", "fp32", caps=FAST, openvino=True)


def test_the_openvino_engine_without_the_extra_says_how_to_install(package_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an install without the extra sees
    for known in (False, None):  # told it is missing, or finding out by importing it
        with pytest.raises(OpenVINOMissingError, match=r"pip install 'imgclf\[openvino\]'"):
            precheck(load_package(package_dir), "openvino", "fp32", caps=FAST, openvino=known)
    from imgclf.engines.openvino import OpenVINOEngine

    with pytest.raises(OpenVINOMissingError, match=r"pip install 'imgclf\[openvino\]'"):
        OpenVINOEngine(load_package(package_dir))


def test_cpu_capabilities_come_from_the_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n\nprocessor\t: 1\n")
    caps = caps_from_flags(read_flags(info))
    assert caps.bf16 and caps.int8 and caps.relevant() == ["avx2", "avx512f", "avx512_bf16", "avx512_vnni"]
    assert caps_from_flags(frozenset({"avx2", "amx_int8"})) == CpuCaps(False, True, frozenset({"avx2", "amx_int8"}))
    assert read_flags(tmp_path / "missing") == frozenset()


def test_the_defaults_keep_onnx_runtime_fp32():
    assert package_engine_args("default", None) == ("onnxruntime", "fp32")
    assert package_engine_args("default", "bf16") == ("auto", "bf16")
    assert package_engine_args("auto", None) == ("auto", "auto")
    assert package_engine_args("openvino", None) == ("openvino", "fp32")
    assert ServerConfig().engine == "onnxruntime"
    with pytest.raises(ValueError, match="engine must be one of"):
        ServerConfig(engine="tensorrt")


def test_a_checkpoint_or_torch_refuses_other_precisions(tmp_path):
    from imgclf.resolve import open_model

    with pytest.raises(UserError, match="torch runs models at fp32"):
        open_model("efficientnet_lite0", runtime="torch", precision="int8")
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"not read")
    with pytest.raises(UserError, match="training checkpoint, which runs in torch at fp32"):
        open_model(str(ckpt), precision="bf16")


def test_the_ranking_covers_every_engine_and_precision():
    pairs = set(choice_mod.RANKING)
    assert pairs == {("openvino", "int8"), ("onnxruntime", "int8"), ("openvino", "bf16"),
                     ("openvino", "fp32"), ("onnxruntime", "fp32")}
    assert choice_mod.RANKING[-1] == ("onnxruntime", "fp32")  # the one that always runs comes last


def write_speed(int8_dir: Path, cpu: str, **images_per_s: float) -> None:
    raw = json.loads((int8_dir / "model.json").read_text())
    raw["speed"] = {"cpu": cpu, "batch": 16, "measured_at": "2026-01-01T00:00:00+00:00",
                    "images_per_s": {k.replace("__", "/"): v for k, v in images_per_s.items()}}
    (int8_dir / "model.json").write_text(json.dumps(raw))


def test_auto_ranks_by_the_speeds_measured_on_this_cpu(package_dir):
    """ONNX Runtime int8 is slower than its fp32 on some models (depthwise convolutions): a measured
    table says so, and auto believes it over the fixed ranking; a table from another CPU is ignored."""
    from imgclf.engines.cpu import cpu_signature

    int8 = with_int8(package_dir, gate("onnxruntime", "int8"))
    fixed = choose(load_package(package_dir), caps=FAST, openvino=False)
    assert (fixed.engine, fixed.precision) == ("onnxruntime", "int8") and "measured" not in fixed.reason
    write_speed(int8, cpu_signature(), onnxruntime__int8=90.0, onnxruntime__fp32=240.0)
    measured = choose(load_package(package_dir), caps=FAST, openvino=False)
    assert (measured.engine, measured.precision) == ("onnxruntime", "fp32")
    assert "speeds measured on this CPU" in measured.reason
    write_speed(int8, "another CPU; 64 CPUs; amx", onnxruntime__int8=90.0, onnxruntime__fp32=240.0)
    other = choose(load_package(package_dir), caps=FAST, openvino=False)
    assert (other.engine, other.precision) == ("onnxruntime", "int8")


def test_a_malformed_speed_record_is_ignored(package_dir):
    from imgclf.engines.speed import SpeedTable

    assert SpeedTable.from_dict({"cpu": "x", "batch": "many", "images_per_s": {}}) is None
    assert SpeedTable.from_dict({"cpu": "x"}) is None
    table = SpeedTable("x", 16, {"openvino/int8": 5.0, "onnxruntime/fp32": 9.0})
    order = table.order([("openvino", "int8"), ("openvino", "bf16"), ("onnxruntime", "fp32")])
    assert order == [("onnxruntime", "fp32"), ("openvino", "int8"), ("openvino", "bf16")]
    int8 = with_int8(package_dir, gate("onnxruntime", "int8"))
    raw = json.loads((int8 / "model.json").read_text())
    raw["speed"] = {"cpu": 3, "images_per_s": "fast"}
    (int8 / "model.json").write_text(json.dumps(raw))
    c = choose(load_package(package_dir), caps=FAST, openvino=False)
    assert (c.engine, c.precision) == ("onnxruntime", "int8")
