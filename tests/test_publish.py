"""The one publish step and the typed provenance record: export, check, evaluate through the
serving path, write model.json once; packages written by earlier versions still load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from serve_support import TINY_LABELS

import imgclf.publish
from imgclf.data import open_dataset
from imgclf.engine import OnnxEngine
from imgclf.evaluation import evaluate_engine
from imgclf.package import DatasetRecord, PackageError, Provenance, check_name, load_package, package_name
from imgclf.pipeline import prepare
from imgclf.preprocess import PreprocessSpec
from imgclf.publish import Published, publish
from imgclf.samples import write_sample_photos

SPEC = PreprocessSpec(input_size=32, crop_pct=0.875)


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, len(TINY_LABELS)),
    ).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Real photos in class folders, with a test split and one unreadable file."""
    base = tmp_path_factory.mktemp("publish")
    photos = sorted(write_sample_photos(base / "photos"))
    for split in ("train", "test"):
        for i, photo in enumerate(photos):
            target = base / "data" / split / TINY_LABELS[i % len(TINY_LABELS)]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target / photo.name)
    (base / "data" / "test" / TINY_LABELS[1] / "broken.png").write_bytes(b"\x89PNG cut short")
    return base / "data"


def test_publish_evaluates_the_package_and_writes_model_json_once(folder, tmp_path, monkeypatch):
    writes = []
    real_write = imgclf.publish.write_package
    monkeypatch.setattr(imgclf.publish, "write_package", lambda *a, **k: writes.append(a) or real_write(*a, **k))
    seen: list[Published] = []

    def report(published: Published) -> None:
        # The package is complete on disk, with the measured metrics, before the report is written.
        on_disk = json.loads((published.package.path / "model.json").read_text())
        assert on_disk["provenance"]["metrics"]["test_accuracy"] == published.evaluations["test"].accuracy
        seen.append(published)

    dataset = open_dataset(folder)
    prov = Provenance(architecture="tiny", task="train", dataset=DatasetRecord("photos"), metrics={"best": 0.5})
    out = tmp_path / "pkg"
    published = publish(tiny_net(), out, name="tiny", labels=TINY_LABELS, spec=SPEC, provenance=prov,
                        dataset=dataset, eval_splits=["test"], report=report)
    assert len(writes) == 1 and seen == [published]
    pkg = load_package(out)
    meta = pkg.meta.provenance
    assert meta.metrics["best"] == 0.5 and meta.num_params == sum(p.numel() for p in tiny_net().parameters())
    assert meta.export_check["max_abs_diff"] == published.check.max_abs_diff < 1e-4
    # The figures recorded are those of the written package, evaluated as `imgclf evaluate` does.
    again = evaluate_engine(OnnxEngine(pkg), dataset, "test", progress=False)
    assert again.to_dict() == published.evaluations["test"].to_dict()
    assert meta.metrics["test_accuracy"] == again.accuracy and meta.metrics["test_images"] == again.n
    assert again.n == len(list((folder / "train").rglob("*.jpg"))) and len(again.errors) == 1
    out_rows = published.outputs["test"]
    assert len(out_rows.kept) == again.n and out_rows.probs.shape == (again.n, len(TINY_LABELS))


def test_failed_onnx_check_writes_nothing(tmp_path):
    with pytest.raises(PackageError, match="disagrees"):
        publish(tiny_net(), tmp_path / "pkg", name="tiny", labels=TINY_LABELS, spec=SPEC, tolerance=-1.0)
    assert not (tmp_path / "pkg").exists() and list(tmp_path.iterdir()) == []


# -- provenance ------------------------------------------------------------------------------

OLD_TRAIN = {
    "architecture": "vgg3", "arch_options": {"widths": [32, 64, 128]}, "num_params": 551722,
    "recipe": "vgg3-bn", "recipe_settings": {"data": {"val_fraction": 0.2}, "run": {"seed": 3}},
    "dataset": {"name": "cifar10", "format": "cifar10", "path": "/data/cifar", "classes": ["a", "b", "c"],
                "train": 40, "val": 10, "test": 12, "val_from": "0.2 of train (stratified, seed 3)",
                "eval_split": "val", "skipped_files": 0},
    "epochs": 2.0, "steps": 8, "seed": 3, "stopped": "completed", "training_seconds": 4.2, "precision": "fp32",
    "channels_last": False, "threads": 2, "test_time_augmentation": 0,
    "metrics": {"best_val_accuracy": 0.4, "final_train_accuracy": 0.5, "test_accuracy": 0.25},
    "export_check": {"max_abs_diff": 1e-6, "onnx_opset": 17, "torch": "2.5.0"},
    "created": "2026-11-01T10:00:00+00:00", "imgclf_version": "0.1.0",
}
OLD_FINETUNE = {
    "architecture": "efficientnet_lite0 (fine-tuned)", "base_model": "efficientnet_lite0", "family": "efficientnet",
    "weights": "efficientnet_lite0.pth", "num_params": 3400000,
    "dataset": {"path": "/photos/shapes", "classes": ["a", "b", "c"], "counts": {"train": [4, 4, 4], "val": [1, 1, 1]},
                "val_from": "0.2 of train", "skipped_files": 2},
    "finetune": {"epochs": 1, "freeze_epochs": 2, "kept_stage": "all", "test_time_augmentation": 1},
    "metrics": {"val_accuracy": 1.0, "val_images": 3},
}
OLD_ZOO = {"architecture": "mobilenet_v2", "family": "mobilenet", "weights": "mobilenet_v2.pth",
           "weights_source": "package", "weights_url": "https://example.org/m.pth", "weights_license": "BSD-3-Clause",
           "dataset": "imagenet-1k", "num_params": 3504872}


@pytest.mark.parametrize("old", [OLD_TRAIN, OLD_FINETUNE, OLD_ZOO], ids=["train", "finetune", "zoo"])
def test_package_with_old_provenance_loads_and_answers_the_same(tmp_path, old):
    out = tmp_path / "pkg"
    publish(tiny_net(), out, name="tiny", labels=TINY_LABELS, spec=SPEC)
    photo = sorted(write_sample_photos(tmp_path / "photos"))[0]
    x = prepare(photo.read_bytes(), SPEC)[None]
    before = OnnxEngine(load_package(out)).logits(x)
    meta = json.loads((out / "model.json").read_text())
    meta["provenance"] = {**old, "onnx_sha256": meta["provenance"]["onnx_sha256"]}
    (out / "model.json").write_text(json.dumps(meta))  # as the previous version wrote it
    pkg = load_package(out)
    np.testing.assert_array_equal(OnnxEngine(pkg).logits(x), before)
    prov = pkg.meta.provenance
    assert prov.architecture == old["architecture"] and prov.extra == {}
    assert prov.num_params == old["num_params"]
    # Written back in the one shape, it reads back as the same record.
    assert Provenance.from_dict(json.loads(json.dumps(prov.to_dict()))) == prov


def test_old_shapes_map_onto_the_record():
    train = Provenance.from_dict(OLD_TRAIN)
    assert train.task == "train" and train.training["steps"] == 8 and train.training["eval_split"] == "val"
    assert train.training["recipe_settings"]["data"]["val_fraction"] == 0.2
    assert train.dataset == DatasetRecord("cifar10", "/data/cifar", "cifar10", ("a", "b", "c"),
                                          {"train": 40, "val": 10, "test": 12},
                                          "0.2 of train (stratified, seed 3)", 0)
    assert train.metrics["test_accuracy"] == 0.25 and train.export_check["onnx_opset"] == 17
    assert train.created == OLD_TRAIN["created"]
    ft = Provenance.from_dict(OLD_FINETUNE)
    assert ft.task == "finetune" and ft.parent == "efficientnet_lite0" and ft.training["kept_stage"] == "all"
    assert ft.dataset is not None and ft.dataset.name == "shapes" and ft.dataset.splits == {"train": 12, "val": 3}
    assert ft.dataset.skipped_files == 2
    zoo = Provenance.from_dict(OLD_ZOO)
    assert zoo.dataset == DatasetRecord("imagenet-1k") and zoo.weights_license == "BSD-3-Clause"


def test_unknown_provenance_keys_survive_a_rewrite():
    prov = Provenance.from_dict({"architecture": "x", "training": {"epochs": 1}, "from_the_future": {"a": 1}})
    assert prov.extra == {"from_the_future": {"a": 1}}
    assert prov.to_dict()["from_the_future"] == {"a": 1} and prov.to_dict()["training"] == {"epochs": 1}


@pytest.mark.parametrize("bad", [{"dataset": 3}, {"num_params": "many"}])
def test_malformed_provenance_is_a_package_error(tmp_path, bad):
    out = tmp_path / "pkg"
    publish(tiny_net(), out, name="tiny", labels=TINY_LABELS, spec=SPEC)
    meta = json.loads((out / "model.json").read_text())
    meta["provenance"].update(bad)
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError):
        load_package(out)


@pytest.mark.parametrize(("raw", "name"), [("cifar10-vgg", "cifar10-vgg"), ("my photos/v2", "my-photos-v2"),
                                          ("..", "model"), ("_x", "x"), ("a..b", "a.b"), ("x" * 80, "x" * 64)])
def test_package_name_is_always_a_valid_name(raw, name):
    assert package_name(raw) == name and check_name(name) == name
