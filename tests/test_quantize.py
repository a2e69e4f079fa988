"""`imgclf quantize`: the int8 package, its calibration manifest, its accuracy gate, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.cli import main
from imgclf.engine import OnnxEngine
from imgclf.package import load_package, sha256_file
from imgclf.pipeline import prepare

pytest.importorskip("onnx")  # the 'quantize' extra; NNCF only where the default backend runs


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["quantize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _qdq_summary(onnx_path: Path) -> tuple[int, int]:
    """(DequantizeLinear nodes, of them dequantizing an int8 weight per output channel)."""
    import onnx

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    per_channel = [n for n in dq if n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8
                   and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]
    return len(dq), len(per_channel)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from serve_support import build_tiny_package

    return build_tiny_package(tmp_path_factory.mktemp("tiny") / "tiny")


def _blank_folder(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (128, 128, 128)).save(folder / f"blank{i}.jpg")
    return folder


def test_calibration_views_are_distinct_crops_of_the_photo():
    from imgclf.quantize.calibration import crops

    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    views = crops(image, 16)
    assert len(views) == 16 and views[0].shape == image.shape
    assert all(v.shape[0] == v.shape[1] for v in views[1:])
    assert len({v.tobytes() for v in views}) == 16


def test_not_a_package_is_a_one_line_error(tmp_path, capsys):
    code, _, err = _run(capsys, str(tmp_path))
    assert code == 2 and err.startswith("imgclf: error:") and err.count("\n") == 1


def test_empty_calibration_folder_is_a_one_line_error(tiny, tmp_path, capsys, sample_jpegs):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, str(tiny), "--calibration", str(tmp_path / "empty"),
                        "--photos", str(next(iter(sample_jpegs.values())).parent), "--out", str(tmp_path / "q"))
    assert code == 2 and "has no image files" in err and err.count("\n") == 1
    assert not (tmp_path / "q").exists()


def test_unreadable_calibration_file_is_a_one_line_error(tiny, tmp_path, capsys, sample_jpegs):
    cal = _blank_folder(tmp_path / "cal", 2)
    (cal / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code, _, err = _run(capsys, str(tiny), "--calibration", str(cal),
                        "--photos", str(next(iter(sample_jpegs.values())).parent), "--out", str(tmp_path / "q"))
    errors = [line for line in err.splitlines() if line.startswith("imgclf: error:")]
    assert code == 2 and len(errors) == 1 and "broken.jpg cannot be read" in errors[0]
    assert not (tmp_path / "q").exists()


def test_out_never_replaces_a_folder_that_is_not_a_package(tiny, tmp_path, capsys, sample_jpegs):
    photos = str(next(iter(sample_jpegs.values())).parent)
    models = tmp_path / "models"
    shutil.copytree(tiny, models / "tiny")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("kept")
    for out, message in ((models, "a folder holding it"), (tmp_path / "docs", "is not a model package")):
        code, _, err = _run(capsys, str(models / "tiny"), "--calibration", photos, "--photos", photos,
                            "--backend", "onnxruntime", "--out", str(out))
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert load_package(models / "tiny").meta.precision == "fp32"
    assert (tmp_path / "docs" / "notes.txt").read_text() == "kept"


def test_a_package_without_data_needs_calibration(tiny, capsys):
    code, _, err = _run(capsys, str(tiny))
    assert code == 2 and "records no dataset" in err


def test_trained_package_calibrates_on_its_train_split_and_gates_on_its_test_split(tmp_path, capsys, sample_jpegs):
    """The default sources of a trained package: the recorded dataset's splits, never the same images."""
    from serve_support import build_tiny_package

    from imgclf.package import DatasetRecord, Provenance, write_package

    data = tmp_path / "data"
    photos = sorted(sample_jpegs.values())
    for split, offset in (("train", 0), ("test", 7)):
        for label in ("a", "b", "c"):
            (data / split / label).mkdir(parents=True)
            for i, photo in enumerate(photos[:2]):
                img = Image.open(photo).rotate(offset + 31 * i + 97 * "abc".index(label))
                img.save(data / split / label / f"{i}.jpg")
    pkg = load_package(build_tiny_package(tmp_path / "tiny"))
    meta = pkg.meta
    meta.provenance = Provenance(architecture="tiny-test-net", task="train",
                                 dataset=DatasetRecord("data", path=str(data), format="folder"))
    write_package(tmp_path / "trained", pkg.onnx_path, meta)
    code, out, _ = _run(capsys, str(tmp_path / "trained"), "--backend", "onnxruntime")
    int8 = load_package(tmp_path / "trained" / "int8")
    manifest = int8.meta.provenance.extra["calibration"]
    assert manifest["source"] == "train split" and manifest["count"] == 6
    assert all(f["path"].startswith("train/") for f in manifest["files"])
    gate = int8.meta.gate_for("onnxruntime", "int8")
    assert gate is not None and gate.labelled and gate.images == 6 and "test split" in gate.data
    assert code == (0 if gate.passed else 3) and "gate onnxruntime int8 on 6 images" in out
    # Each engine and precision timed here, for auto to rank by.
    from imgclf.engines.cpu import cpu_signature
    from imgclf.engines.speed import SpeedTable

    table = SpeedTable.from_dict(int8.meta.speed)
    assert table is not None and table.cpu == cpu_signature() and table.batch == 16
    assert table.images_per_s["onnxruntime/fp32"] > 0 and table.images_per_s["onnxruntime/int8"] > 0


@pytest.mark.slow
def test_lite0_int8_package_keeps_its_top1_on_real_photos(lite0_package, tmp_path, capsys, sample_jpegs):
    pytest.importorskip("nncf")
    pkg = tmp_path / "lite0"
    shutil.copytree(lite0_package, pkg)
    code, out, err = _run(capsys, str(pkg))
    int8_dir = pkg / "int8"
    int8 = load_package(int8_dir)
    parent = load_package(pkg)
    meta = int8.meta
    assert meta.precision == "int8" and meta.labels == parent.labels and meta.preprocess == parent.spec
    prov = meta.provenance
    assert prov.extra["quantized_from"] == {"name": parent.name, "version": parent.meta.version,
                                            "onnx_sha256": parent.meta.provenance.onnx_sha256}
    manifest = prov.extra["calibration"]
    assert manifest["source"] == "bundled photos" and manifest["count"] == len(manifest["files"]) == 4
    assert manifest["views_per_image"] == 16
    from imgclf.quantize.photos import photos_dir

    for f in manifest["files"]:
        assert f["sha256"] == sha256_file(photos_dir() / f["path"])
    assert prov.extra["quantization"]["fixes"]["bias_correction"] == "fast"
    # Four shipped photos are too few to choose layers by: accuracy control is off by default here
    # (test_quantize_accuracy.py covers it on calibration images that can steer it).
    assert prov.extra["quantization"]["fixes"]["max_float_layers"] == 0 and "accuracy control off" in err
    q, per_channel = _qdq_summary(int8.onnx_path)
    assert q > 50 and per_channel > 30
    gate = meta.gate_for("onnxruntime", "int8")
    assert gate is not None and gate.images == 2 and not gate.labelled
    assert code == (0 if gate.passed else 3), err
    # Same top-1 as fp32 on every sample photo, through the serving path.
    fp32_engine, int8_engine = OnnxEngine(parent), OnnxEngine(int8)
    batch = np.stack([prepare(p.read_bytes(), parent.spec) for p in sample_jpegs.values()])
    assert (fp32_engine.probabilities(batch).argmax(1) == int8_engine.probabilities(batch).argmax(1)).all()


@pytest.mark.slow
def test_blank_calibration_fails_the_gate_and_marks_the_package(lite0_package, tmp_path, capsys, sample_jpegs):
    cal = _blank_folder(tmp_path / "blank")
    photos = next(iter(sample_jpegs.values())).parent
    code, _, err = _run(capsys, str(lite0_package), "--calibration", str(cal), "--photos", str(photos),
                        "--out", str(tmp_path / "bad"), "--backend", "onnxruntime")
    assert code == 3 and "missed its accuracy gate" in err
    raw = json.loads((tmp_path / "bad" / "model.json").read_text())
    assert raw["precision"] == "int8"
    gate = next(g for g in raw["gates"] if g["engine"] == "onnxruntime")  # OpenVINO's too when installed
    assert gate["passed"] is False and gate["reason"] and gate["top1_agreement"] < 99
