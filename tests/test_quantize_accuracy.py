"""Accuracy control in `imgclf quantize`: a layer int8 ruins goes back to float, and the record says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.cli import main
from imgclf.quantize.accuracy import Target

pytest.importorskip("onnx")


def test_unlabelled_target_needs_agreement_and_overlap():
    ref = np.eye(6, dtype=np.float32)[[0, 1, 2, 3]] + np.arange(6, dtype=np.float32) * 0.01
    target = Target(ref, None)
    assert not target.labelled and target.max_drop == pytest.approx(0.01)
    same = [target.per_item(i, ref[i]) for i in range(4)]
    assert same == [(1.0, 1.0)] * 4 and target.metric(same) == 1.0
    wrong = target.per_item(0, ref[1])
    assert wrong[0] == 0.0 and 0 < wrong[1] < 1
    # 98% overlap with full agreement is exactly the gate's edge: the metric sits at 0.99.
    assert target.metric([(1.0, 0.98)] * 10) == pytest.approx(0.99)


def test_labelled_target_is_accuracy_within_the_gates_drop():
    ref = np.eye(3, dtype=np.float32)
    target = Target(ref, np.asarray([0, 1, 1]))
    assert target.labelled and target.max_drop == pytest.approx(0.005)
    items = [target.per_item(i, ref[i]) for i in range(3)]
    assert target.metric(items) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        Target(ref, np.asarray([0, 1]))


def test_constants_and_shared_weights_become_initializers():
    """NNCF reads a layer's weight only from an initializer; a PyTorch export that shares one weight
    between layers reaches it through Identity nodes, and Constant nodes hold others."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from imgclf.quantize.quantizer import constants_as_initializers

    w = np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Identity", ["w"], ["w_shared"]),
             helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.ones(4, np.float32))),
             helper.make_node("Conv", ["x", "w_shared", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 2, 2])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).standard_normal((1, 3, 2, 2)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    constants_as_initializers(model)
    assert [(n.op_type, list(n.input)) for n in model.graph.node] == [("Conv", ["x", "w", "b"])]
    assert {i.name for i in model.graph.initializer} == {"w", "b"}
    np.testing.assert_array_equal(ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0], before)


def test_keeping_the_first_layer_keeps_every_layer_that_shares_its_weight():
    """An exported graph with test-time augmentation runs the first layer once per view, all on one
    weight: keeping only the first node in float would still quantize that weight for the others."""
    import onnx
    from onnx import helper, numpy_helper

    from imgclf.quantize.fixes import Fixes, float_nodes

    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    w2 = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="first"),
             helper.make_node("Conv", ["x", "w"], ["b"], name="first_view2"),
             helper.make_node("Add", ["a", "b"], ["c"], name="add"),
             helper.make_node("Conv", ["c", "w2"], ["d"], name="middle"),
             helper.make_node("Conv", ["d", "w2"], ["y"], name="last")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w, w2])
    model = helper.make_model(graph)
    assert float_nodes(model, Fixes()) == ["first", "last", "first_view2", "middle"]
    assert float_nodes(model, Fixes(keep_first_last=False)) == []


def _outlier_package(out: Path) -> Path:
    """A net that tells warm photos (class a) from cool ones (b) by a small colour signal carried
    next to one huge constant channel: int8 activations with one scale for the tensor round the
    signal to zero, so int8 answers c for every photo unless the layer reading it stays float."""
    import torch

    from imgclf.package import Provenance
    from imgclf.preprocess import PreprocessSpec
    from imgclf.publish import publish

    first, mid, third, head = (torch.nn.Conv2d(3, 2, 1), torch.nn.Conv2d(2, 2, 1), torch.nn.Conv2d(2, 2, 1),
                               torch.nn.Linear(2, 3))
    with torch.no_grad():
        for layer in (first, mid, third, head):
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[0, 0], first.weight[0, 2] = 1.0, -1.0  # red minus blue
        first.weight[1, 0], first.weight[1, 2] = -1.0, 1.0  # blue minus red
        mid.bias[0] = 1000.0  # the constant channel
        mid.weight[1, 0], mid.weight[1, 1] = 0.01, -0.01  # the signal: about 0.01
        third.weight[0, 1], third.weight[1, 1] = 300.0, -300.0
        head.weight[0, 0], head.weight[1, 1] = 1.0, 1.0
        head.bias[2] = 0.05
    net = torch.nn.Sequential(first, torch.nn.ReLU(), mid, third, torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), head)
    publish(net.eval(), out, name="outlier", labels=["a", "b", "c"],
            spec=PreprocessSpec(input_size=32, crop_pct=1.0), provenance=Provenance(architecture="outlier-test-net"))
    return out


def _photos(folder: Path, sources: list[Path], angles: range) -> Path:
    folder.mkdir(parents=True)
    for i, src in enumerate(sources):
        for a in angles:
            Image.open(src).convert("RGB").rotate(a).save(folder / f"{i}-{a}.jpg")
    return folder


@pytest.mark.slow
def test_accuracy_control_restores_the_layer_int8_ruins(tmp_path, capsys, sample_jpegs):
    pytest.importorskip("nncf")
    pkg = _outlier_package(tmp_path / "outlier")
    sources = sorted(sample_jpegs.values())
    cal = _photos(tmp_path / "cal", sources, range(0, 360, 45))
    gate = _photos(tmp_path / "gate", sources, range(20, 360, 60))

    def quantize(out: str, *extra: str) -> tuple[int, dict]:
        code = main(["quantize", str(pkg), "--calibration", str(cal), "--photos", str(gate), "--out",
                     str(tmp_path / out), "--quantize-first-last", *extra])
        capsys.readouterr()
        return code, json.loads((tmp_path / out / "model.json").read_text())

    code, plain = quantize("plain", "--max-float-layers", "0")
    ort_gate = next(g for g in plain["gates"] if g["engine"] == "onnxruntime")
    assert code == 3 and not ort_gate["passed"] and ort_gate["top1_agreement"] < 99
    assert plain["provenance"]["quantization"]["float_nodes"] == []

    code, controlled = quantize("controlled")
    quantization = controlled["provenance"]["quantization"]
    assert quantization["fixes"]["max_float_layers"] == 8
    restored = quantization["float_nodes"]
    assert "/3/Conv" in restored and len(restored) <= 8, restored
    ort_gate = next(g for g in controlled["gates"] if g["engine"] == "onnxruntime")
    assert ort_gate["passed"] and code == (0 if all(g["passed"] for g in controlled["gates"]) else 3)


def test_a_splits_calibration_images_carry_their_own_labels(tmp_path):
    """Accuracy control judges a trained package by its labels: each calibration file must keep its class."""
    from imgclf.data import open_dataset
    from imgclf.quantize.calibration import from_split

    for label in ("ant", "bee", "cow"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(7):
            Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(tmp_path / "train" / label / f"{i}.png")
    cal = from_split(open_dataset(tmp_path, "folder", val_fraction=0.0), "train", samples=10)
    assert len(cal) == 10 and cal.labels is not None and len(cal.labels) == 10
    assert [f.parent.name for f in cal.files] == list(cal.labels)


def test_accuracy_control_that_fails_leaves_a_plain_int8_package(tmp_path, capsys, sample_jpegs, monkeypatch):
    """NNCF's restorer does not take every graph: the plain int8 model is still written and gated."""
    pytest.importorskip("nncf")
    from imgclf.quantize import accuracy

    def broken(*args, **kwargs):
        raise RuntimeError("this graph is not supported\nsecond line")

    monkeypatch.setattr(accuracy, "quantize_with_accuracy_control", broken)
    pkg = _outlier_package(tmp_path / "outlier")
    cal = _photos(tmp_path / "cal", sorted(sample_jpegs.values())[:2], range(0, 360, 90))
    code = main(["quantize", str(pkg), "--calibration", str(cal), "--photos", str(cal), "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code in (0, 3) and "accuracy control failed on this graph (RuntimeError: this graph is not supported)" in err
    meta = json.loads((tmp_path / "q" / "model.json").read_text())
    assert meta["precision"] == "int8" and meta["provenance"]["quantization"]["fixes"]["max_float_layers"] == 0
