"""``imgclf finetune --publish-to``: version N+1 of a model from its data plus a feedback export,
with its parent and the feedback records in model.json; ``imgclf evaluate A B`` side by side."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil

import pytest
from _finetune_folder import CLASSES, make_folder

from imgclf import zoo
from imgclf.cli import main
from imgclf.model_store import ModelStore
from imgclf.package import load_package
from imgclf.zoo.weights import availability

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(availability(zoo.get("efficientnet_lite0")) != "installed",
                                 reason="the efficientnet-lite0 weights package is not installed")]

FAST = ["--freeze-epochs", "2", "--epochs", "0", "--batch-size", "16", "--no-progress", "--offline"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _feedback_export(root, ids):
    """A folder shaped like an ``imgclf feedback export``: class subfolders and manifest.json."""
    make_folder(root, {"circles": 3, "squares": 3}, seed=9)
    files = sorted(p.relative_to(root) for p in root.rglob("*.*"))
    records = [{"id": i, "sha256": "0" * 64, "label": f.parent.name, "model": "shapes", "version": "1",
                "file": str(f)} for i, f in zip(ids, files, strict=True)]
    # A merged copy of training images beside the corrections is not part of the export's records.
    for n, src in enumerate(sorted((root / "squares").iterdir())[:2]):
        shutil.copyfile(src, root / "circles" / f"merged-{n}{src.suffix}")
    (root / "manifest.json").write_text(json.dumps({"kind": "imgclf-feedback-export", "records": records,
                                                    "merged_with": None, "created_at": "2026-01-01T00:00:00Z"}))
    return root


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    base = tmp_path_factory.mktemp("versions")
    data = make_folder(base / "shapes", {name: 12 for name in CLASSES})
    models = base / "models"
    models.mkdir()
    fb = _feedback_export(base / "export", [11, 12, 13, 14, 15, 16])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLF_HOME", str(base / "home"))
        first = _run(["finetune", "--data", str(data), "--publish-to", str(models), "--name", "shapes",
                      "--image-size", "64", *FAST])
        assert first[0] == 0, first
        # Version 2: no --image-size and no --base: both come from the parent (version 1).
        second = _run(["finetune", "--data", str(data), "--add-data", str(fb), "--publish-to", str(models),
                       "--name", "shapes", *FAST])
        assert second[0] == 0, second
    return {"base": base, "data": data, "models": models, "fb": fb, "second": second}


def test_versions_are_published_side_by_side(published):
    store = ModelStore(published["models"] / "shapes")
    assert list(store.versions())[:2] == ["1", "2"]
    v1, v2 = (load_package(store.path(v)) for v in ("1", "2"))
    assert (v1.meta.version, v2.meta.version) == ("1", "2")
    assert v1.name == v2.name == "shapes"
    # Publishing version 2 rolls nothing out: the default stays 1.
    assert store.default_version() == "1"
    assert "published version 2 of shapes (default version: 1)" in published["second"][1]
    assert v2.spec.input_size == 64 and v2.meta.provenance.parent == "efficientnet_lite0"


def test_version_2_records_its_parent_and_feedback(published):
    store = ModelStore(published["models"] / "shapes")
    v1, v2 = (load_package(store.path(v)) for v in ("1", "2"))
    prov = v2.meta.provenance.to_dict()
    assert prov["parent_version"] == "1"
    assert prov["parent_sha256"] == v1.meta.provenance.onnx_sha256
    manifest = (published["fb"] / "manifest.json").read_bytes()
    assert prov["feedback"] == {"records": [11, 12, 13, 14, 15, 16],
                                "manifests": [hashlib.sha256(manifest).hexdigest()]}
    assert prov["added_data"][0]["images"] == prov["added_data"][0]["records"] == 6
    # The feedback images joined the training split only.
    splits = v2.meta.provenance.dataset.splits
    assert splits["train"] == load_package(store.path("1")).meta.provenance.dataset.splits["train"] + 6
    assert "parent_version" not in v1.meta.provenance.to_dict()


def test_a_version_that_loses_a_class_is_refused(published, tmp_path):
    two = tmp_path / "two"
    shutil.copytree(published["data"] / "circles", two / "circles")
    shutil.copytree(published["data"] / "squares", two / "squares")
    before = list(ModelStore(published["models"] / "shapes").versions())
    code, out, err = _run(["finetune", "--data", str(two), "--publish-to", str(published["models"]),
                           "--name", "shapes", *FAST])
    assert code != 0 and "would lose class(es) triangles" in err
    assert list(ModelStore(published["models"] / "shapes").versions()) == before


def test_add_data_with_an_unknown_class_is_refused(published, tmp_path):
    odd = make_folder(tmp_path / "odd", {"hexagons": 2})
    code, out, err = _run(["finetune", "--data", str(published["data"]), "--add-data", str(odd),
                           "--out", str(tmp_path / "pkg"), *FAST])
    assert code != 0 and "hexagons are not classes of --data" in err


def test_evaluate_compares_two_versions_side_by_side(published, tmp_path):
    store = published["models"] / "shapes"
    code, out, err = _run(["evaluate", str(store / "1"), str(store / "2"), "--data", str(published["data"]),
                           "--data", str(published["fb"]), "--out", str(tmp_path / "cmp"), "--no-progress"])
    assert code == 0, err
    assert "shapes v1" in out and "shapes v2" in out and "accuracy" in out and "recall circles" in out
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [m["version"] for m in doc["models"]] == ["1", "2"]
    shapes, corrected = doc["datasets"]
    assert shapes["images"] == 36 and corrected["images"] == 8  # all images of a plain folder
    assert shapes["split"] == corrected["split"] == "all"
    for d in (shapes, corrected):
        assert d["disagree"] == len(d["disagreements"])
        assert 0 <= d["a"]["accuracy"] <= 1 and 0 <= d["b"]["accuracy"] <= 1
    # One model, several --data: refused with a clear message.
    code, out, err = _run(["evaluate", str(store / "1"), "--data", "x", "--data", "y"])
    assert code != 0 and "several --data need two models" in err


def test_python_api_publishes_a_version_with_an_explicit_parent(published, monkeypatch):
    import imgclf

    monkeypatch.setenv("IMGCLF_HOME", str(published["base"] / "home"))
    models = published["models"]
    package = imgclf.finetune(published["data"], publish_to=models, name="shapes", parent=models / "shapes" / "2",
                              add_data=[published["fb"]], freeze_epochs=1, epochs=0, batch_size=16,
                              allow_download=False, progress=False, log=None)
    assert package.path == models / "shapes" / "3" and package.meta.version == "3"
    prov = package.meta.provenance.to_dict()
    assert prov["parent_version"] == "2" and prov["feedback"]["records"] == [11, 12, 13, 14, 15, 16]
    assert ModelStore(models / "shapes").default_version() == "1"
