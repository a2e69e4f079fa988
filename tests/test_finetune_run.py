"""``imgclf finetune`` end to end on a small generated folder, from the real efficientnet_lite0
weights: both stages run through the trainer, the feature cache is written and then used, and the
package predicts the folder's classes through ``imgclf predict``, ONNX Runtime and the server's
management API (loaded by name without a restart)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from _finetune_folder import CLASSES, draw, make_folder

from imgclf import zoo
from imgclf.cli import main
from imgclf.engine import OnnxEngine
from imgclf.package import load_package
from imgclf.pipeline import prepare
from imgclf.zoo.weights import availability

pytestmark = pytest.mark.skipif(availability(zoo.get("efficientnet_lite0")) != "installed",
                                reason="the efficientnet-lite0 weights package is not installed")

ARGS = ["--image-size", "64", "--freeze-epochs", "4", "--epochs", "1", "--batch-size", "16",
        "--no-progress", "--offline", "--seed", "1"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("finetune")
    data = make_folder(base / "shapes", {name: 20 for name in CLASSES} | {"circles": 14},
                       corrupt={"squares": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLF_HOME", str(base / "home"))
        code, out, err = _run(["finetune", "--data", str(data), "--out", str(base / "repo" / "shapes"), *ARGS])
        assert code == 0, out + err
        # Second run on the same folder and base: head only, so it is quick; it must reuse the features.
        code2, out2, err2 = _run(["finetune", "--data", str(data), "--out", str(base / "repo" / "shapes-head"),
                                  *ARGS[:2], "--freeze-epochs", "2", "--epochs", "0", "--tta", "1",
                                  "--no-progress", "--offline"])
        assert code2 == 0, out2 + err2
    return {"base": base, "data": data, "pkg": base / "repo" / "shapes", "out": out, "err": err,
            "out2": out2, "err2": err2}


def test_summary_corrupt_files_and_warnings_are_reported(run):
    out, err = run["out"], run["err"]
    assert "3 classes" in out and "circles" in out and "triangles" in out
    assert "skipped 2 unreadable file(s)" in out and "squares/broken0.jpg" in out
    assert "imgclf: warning: few images in class(es) circles (14)" in err


def test_both_stages_run_through_the_trainer(run):
    pkg = run["pkg"]
    history = json.loads((pkg / "history.json").read_text())["epochs"]
    stages = [row["stage"] for row in history]
    assert stages[0] == "head" and stages[-1] == "all" and stages.count("all") == 1
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    metrics = json.loads((pkg / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"head", "all"}
    assert metrics["stages"]["head"]["best_val_acc"] is not None
    assert "stage 1: training the head" in run["out"] and "stage 2: fine-tuning all layers" in run["out"]
    # The trainer's per-epoch log lines for both stages.
    assert run["err"].count("epoch 1:") == 2
    assert not (pkg / "training").exists()  # training state is gone once the package is written


def test_feature_cache_written_then_used(run):
    assert "feature cache miss" in run["out"]
    assert "feature cache hit" in run["out2"] and "loaded from the cache" in run["out2"]
    cached = list((run["base"] / "home" / "features").glob("efficientnet_lite0-*.npz"))
    assert len(cached) == 1
    head_only = json.loads((run["base"] / "repo" / "shapes-head" / "metrics.json").read_text())
    assert head_only["kept_stage"] == "head" and set(head_only["stages"]) == {"head"}


def test_mirror_tta_package_is_mirror_invariant(run, tmp_path):
    pkg = load_package(run["base"] / "repo" / "shapes-head")
    assert pkg.meta.provenance.training["test_time_augmentation"] == 1
    engine = OnnxEngine(pkg)
    x = np.stack([prepare(f.read_bytes(), engine.spec) for fs in _fresh_images(tmp_path, 1).values() for f in fs])
    np.testing.assert_allclose(engine.logits(x), engine.logits(x[..., ::-1].copy()), atol=1e-4)


def test_package_contents_and_metadata(run):
    pkg = load_package(run["pkg"])
    assert pkg.name == "shapes" and pkg.labels == ["circles", "squares", "triangles"]
    assert pkg.spec.input_size == 64 and pkg.spec.interpolation == "bicubic"  # the base model's preprocessing
    prov = pkg.meta.provenance
    assert prov.task == "finetune" and prov.parent == "efficientnet_lite0"
    assert prov.dataset is not None and prov.dataset.skipped_files == 2
    assert 0.0 <= prov.metrics["val_accuracy"] <= 1.0
    metrics = json.loads((run["pkg"] / "metrics.json").read_text())
    assert prov.metrics["val_accuracy"] == metrics["val"]["accuracy"] and metrics["summary"] == dict(prov.metrics)
    for name in ("learning_curves.png", "confusion_matrix.png", "worst_val.png", "report.md", "history.csv"):
        assert (run["pkg"] / name).is_file(), name
    report = (run["pkg"] / "report.md").read_text()
    assert "## Validation" in report and "worst_val.png" in report


def _fresh_images(tmp_path, per_class: int = 4) -> dict[str, list]:
    rng = np.random.default_rng(123)
    files: dict[str, list] = {}
    for cls in CLASSES:
        for i in range(per_class):
            f = tmp_path / f"{cls}-{i}.png"
            from PIL import Image

            Image.fromarray(draw(cls, rng, 80)).save(f)
            files.setdefault(cls, []).append(f)
    return files


def test_package_predicts_the_folder_classes(run, tmp_path):
    files = _fresh_images(tmp_path)
    code, out, err = _run(["predict", "--model", str(run["pkg"]), "--json", "-k", "1",
                           *[str(f) for fs in files.values() for f in fs]])
    assert code == 0, err
    results = json.loads(out)
    predicted = [r["predictions"][0]["label"] for r in results]
    truth = [cls for cls, fs in files.items() for _ in fs]
    assert set(predicted) <= set(CLASSES)
    assert np.mean([p == t for p, t in zip(predicted, truth, strict=True)]) >= 0.75
    # The same through ONNX Runtime directly, with the package's own preprocessing.
    engine = OnnxEngine(load_package(run["pkg"]))
    batch = np.stack([prepare(f.read_bytes(), engine.spec) for fs in files.values() for f in fs])
    assert [engine.labels[i] for i in engine.probabilities(batch).argmax(1)] == predicted


def test_server_loads_the_package_by_name_without_restart(run, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgclf.server import ServerConfig, create_app

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(run["pkg"], repo / "shapes")
    files = _fresh_images(tmp_path, per_class=1)
    engine = OnnxEngine(load_package(run["pkg"]))
    key = {"X-API-Key": "test-key"}  # the management API is off without a key
    with TestClient(create_app(ServerConfig(model_dir=str(repo), api_key="test-key"))) as client:
        rows = client.post("/v2/repository/index", headers=key).json()
        assert {"name": "shapes", "state": "UNAVAILABLE"}.items() <= rows[0].items()
        r = client.post("/v2/repository/models/shapes/load", headers=key)
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == ["circles", "squares", "triangles"]
        for fs in files.values():
            r = client.post("/v1/models/shapes/predict", content=fs[0].read_bytes(),
                            headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            expected = engine.labels[int(engine.probabilities(prepare(fs[0].read_bytes(), engine.spec)[None]).argmax())]
            assert r.json()["predictions"][0][0]["label"] == expected
