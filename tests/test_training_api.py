"""The Python front door: ``imgclf.train(...)`` and ``imgclf.finetune(...)`` return the published
package, the same one the commands write; bad options and Ctrl-C end in the library's own errors."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from _finetune_folder import CLASSES, make_folder
from train_support import write_image_folder

import imgclf
from imgclf import zoo
from imgclf.engine import OnnxEngine
from imgclf.errors import UserError
from imgclf.package import ModelPackage, load_package
from imgclf.pipeline import prepare
from imgclf.training_api import TrainingInterrupted, parse_duration
from imgclf.zoo.weights import availability

TINY_VGG = {"net.widths": [8, 16, 32], "net.dense": 32}


def test_train_returns_the_package_it_wrote(tmp_path):
    data = write_image_folder(tmp_path / "photos", {"train": 8, "test": 3})
    package = imgclf.train(data, out=tmp_path / "run", recipe="vgg1", epochs=1, batch_size=8, overrides=TINY_VGG,
                           precision="fp32", channels_last=False, progress=False, cache_dir=tmp_path / "cache")
    assert isinstance(package, ModelPackage)
    assert package.path.resolve() == (tmp_path / "run" / "package").resolve()
    again = load_package(package.path)
    assert again.labels == package.labels == sorted(p.name for p in (data / "train").iterdir())
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["stopped"] == "completed" and len(history["epochs"]) == 1
    assert "test_accuracy" in package.meta.provenance.metrics
    test_files = sorted((data / "test").rglob("*.png"))
    x = np.stack([prepare(f.read_bytes(), package.spec) for f in test_files[:4]])
    probs = OnnxEngine(package).probabilities(x)
    assert probs.shape == (4, len(package.labels)) and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    # resume=True on a finished run trains nothing more and returns the same package
    assert imgclf.train(data, out=tmp_path / "run", resume=True, progress=False).path == package.path


def test_train_checks_options_before_training(tmp_path):
    with pytest.raises(UserError, match="--epochs must be positive"):
        imgclf.train(None, out=tmp_path / "run", format="fashion-mnist", epochs=0)
    with pytest.raises(UserError, match="duration"):
        imgclf.train(None, out=tmp_path / "run", time_budget="soon")
    with pytest.raises(UserError, match="unknown recipe"):
        imgclf.train(tmp_path, out=tmp_path / "run", recipe="nope")
    assert parse_duration("1h30m") == 5400.0


def test_an_interrupted_run_raises_and_resumes(tmp_path, monkeypatch):
    import os
    import signal

    from imgclf.train import loop
    from imgclf.train.schedule import lr_factor

    data = write_image_folder(tmp_path / "photos", {"train": 8, "test": 3})

    def ctrl_c_at_step_2(config, step, total):  # the schedule is asked once per step: a real Ctrl-C there
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return lr_factor(config, step, total)

    common = {"out": tmp_path / "run", "recipe": "vgg1", "batch_size": 8, "overrides": TINY_VGG,
              "precision": "fp32", "channels_last": False, "progress": False, "cache_dir": tmp_path / "cache"}
    with monkeypatch.context() as mp:
        mp.setattr(loop, "lr_factor", ctrl_c_at_step_2)
        with pytest.raises(TrainingInterrupted, match="resume=True"):
            imgclf.train(data, epochs=2, **common)
    assert not (tmp_path / "run" / "package").exists()
    package = imgclf.train(data, epochs=2, resume=True, **common)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2] and package.path.is_dir()


def test_the_packages_are_the_functions():
    assert callable(imgclf.train) and callable(imgclf.finetune)
    assert "recipe" in inspect.signature(imgclf.train).parameters
    assert "model" in inspect.signature(imgclf.finetune).parameters


@pytest.mark.slow
@pytest.mark.skipif(availability(zoo.get("efficientnet_lite0")) != "installed",
                    reason="the efficientnet-lite0 weights package is not installed")
def test_finetune_returns_the_package_it_wrote(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    data = make_folder(tmp_path / "shapes", {name: 12 for name in CLASSES})
    lines: list[str] = []
    package = imgclf.finetune(data, out=tmp_path / "pets", model="efficientnet_lite0", image_size=64,
                              freeze_epochs=2, epochs=1, batch_size=16, allow_download=False, progress=False,
                              log=lines.append)
    assert isinstance(package, ModelPackage) and package.labels == sorted(CLASSES)
    assert load_package(tmp_path / "pets").meta.provenance.parent == "efficientnet_lite0"
    assert any("stage 1" in line for line in lines)
    files = sorted(data.rglob("*.jpg"))[:3]
    x = np.stack([prepare(f.read_bytes(), package.spec) for f in files])
    assert OnnxEngine(package).probabilities(x).shape == (3, len(CLASSES))
    with pytest.raises(UserError, match="unknown model"):
        imgclf.finetune(data, out=tmp_path / "other", model="not-a-model")
