"""Model packages: export from torch, import of external ONNX, validation, the engine on top."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch
from torch import nn

from imgclf.cli import main
from imgclf.engine import OnnxEngine, top_k
from imgclf.export import export_onnx
from imgclf.package import DatasetRecord, PackageError, Provenance, check_name, import_onnx, load_package
from imgclf.preprocess import PreprocessSpec
from imgclf.publish import publish
from imgclf.samples import reference_photo

SPEC = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="squash")
LABELS = ["ant", "bee", "cat", "dog"]


def tiny_net(out: int = 4, softmax: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
              nn.Flatten(), nn.Linear(8, out)]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    net = nn.Sequential(*layers)
    with torch.no_grad():  # non-trivial BN statistics so folding errors would show
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "tiny"
    report = publish(tiny_net(), out, name="tiny", labels=LABELS, spec=SPEC,
                     provenance=Provenance(architecture="tiny", dataset=DatasetRecord("none")))
    assert report.check.max_abs_diff < 1e-4
    return report.package


def test_package_files_and_metadata(package):
    meta = json.loads((package.path / "model.json").read_text())
    assert meta["format_version"] == 1
    assert meta["name"] == "tiny" and meta["labels"] == LABELS
    assert meta["input"] == {"name": "input", "shape": [None, 3, 32, 32], "dtype": "float32"}
    assert meta["output"]["kind"] == "logits"
    prov = meta["provenance"]
    assert prov["architecture"] == "tiny" and "created" in prov and len(prov["onnx_sha256"]) == 64
    assert PreprocessSpec.from_dict(meta["preprocess"]) == SPEC


def test_engine_matches_torch_on_a_real_photo_at_several_batch_sizes(package):
    from imgclf.preprocess import preprocess

    x = preprocess(reference_photo(), SPEC)
    engine = OnnxEngine(load_package(package.path))
    net = tiny_net()
    for n in (1, 3, 8):
        batch = np.repeat(x[None], n, axis=0)
        with torch.no_grad():
            ref = net(torch.from_numpy(batch)).numpy()
        np.testing.assert_allclose(engine.logits(batch), ref, atol=1e-5)
    probs = engine.probabilities(x[None])
    assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1) < 1e-5
    best = top_k(probs, engine.labels, 2)[0]
    assert best[0].score >= best[1].score and best[0].label in LABELS


def test_missing_files_are_reported(package, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(package.path, broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(PackageError, match="no model.onnx"):
        load_package(broken)
    with pytest.raises(PackageError, match="not a directory"):
        load_package(tmp_path / "nothing")
    (broken / "model.json").unlink()
    with pytest.raises(PackageError, match="no model.json"):
        load_package(broken)


def test_inconsistent_package_is_refused(package, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(package.path, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["labels"] = ["only", "three", "labels"]
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="4 outputs but model.json lists 3 labels"):
        OnnxEngine(load_package(bad))
    # A model.onnx from another export does not match the recorded hash.
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(PackageError, match="sha256"):
        load_package(bad)
    (bad / "model.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(bad)
    (bad / "model.json").write_text(json.dumps({"format_version": 1, "name": "x"}))
    with pytest.raises(PackageError, match="missing"):
        load_package(bad)
    meta["format_version"] = 99
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="newer"):
        load_package(bad)


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 65, "semi;colon"])
def test_bad_names_rejected(name):
    with pytest.raises(PackageError):
        check_name(name)


def test_export_is_atomic_and_replaces_whole(package, tmp_path):
    out = tmp_path / "pkg"
    publish(tiny_net(), out, name="first", labels=LABELS, spec=SPEC)
    (out / "stray.txt").write_text("left from before")
    publish(tiny_net(), out, name="second", labels=LABELS, spec=SPEC)
    assert load_package(out).name == "second"
    assert not (out / "stray.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no temp dirs left behind


def test_package_is_readable_by_other_users_under_the_usual_umask(tmp_path):
    # A server often runs as another user than the one who exported the package.
    old = os.umask(0o022)
    try:
        out = tmp_path / "pkg"
        publish(tiny_net(), out, name="shared", labels=LABELS, spec=SPEC)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in out.iterdir())


def _external_onnx(tmp_path, net, spec=SPEC, name="external.onnx"):
    path = tmp_path / name
    export_onnx(net, spec, path, input_name="data", output_name="prob")
    return path


def test_import_external_onnx_detects_probabilities(tmp_path):
    path = _external_onnx(tmp_path, tiny_net(softmax=True))
    pkg = import_onnx(path, tmp_path / "imported", labels=LABELS, spec=SPEC, name="ext")
    assert pkg.meta.output_kind == "probabilities"
    assert pkg.meta.input_name == "data" and pkg.meta.output_name == "prob"
    engine = OnnxEngine(load_package(pkg.path))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = tiny_net(softmax=True)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.probabilities(x), ref, atol=1e-6)


def test_import_rejects_label_count_mismatch_and_wrong_size(tmp_path):
    path = _external_onnx(tmp_path, nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).eval())
    with pytest.raises(PackageError, match="4"):
        import_onnx(path, tmp_path / "x", labels=["a", "b"], spec=SPEC)
    with pytest.raises(PackageError, match="--size"):
        import_onnx(path, tmp_path / "x", labels=LABELS, spec=PreprocessSpec(input_size=64))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(PackageError, match="not a loadable ONNX"):
        import_onnx(tmp_path / "junk.onnx", tmp_path / "y", labels=LABELS, spec=SPEC)


def test_import_command(tmp_path, capsys):
    path = _external_onnx(tmp_path, tiny_net())
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    code = main(["import", str(path), "--labels", str(labels), "--out", str(tmp_path / "p"), "--size", "32",
                 "--resize", "squash", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
                 "--name", "mine"])
    assert code == 0
    assert "mine v1, 4 labels, output logits" in capsys.readouterr().out
    pkg = load_package(tmp_path / "p")
    assert pkg.spec.mean == (0.5, 0.5, 0.5) and pkg.spec.std == (0.25, 0.25, 0.25)


def test_import_command_errors_are_one_line(tmp_path, capsys):
    code = main(["import", str(tmp_path / "missing.onnx"), "--labels", str(tmp_path / "l.txt"),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("imgclf: error:") and "\n" not in err
