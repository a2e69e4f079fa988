"""`imgclf train`, `imgclf evaluate`, `imgclf experiment`: runs end to end on tiny datasets, and the
package round trip (the served model gives the checkpoint's logits for the same file)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from train_support import CLASSES, class_images, write_cifar10, write_fashion_idx, write_image_folder

from imgclf.cli import main
from imgclf.engine import OnnxEngine, softmax
from imgclf.package import load_package
from imgclf.pipeline import prepare
from imgclf.train.loop import load_checkpoint
from imgclf.train.models import TTA, model_from_checkpoint

QUICK = ["--precision", "fp32", "--channels-last", "off", "--no-progress"]
TINY_VGG = ["--set", "net.widths=8,16,32", "--set", "net.dense=32"]


def _train(args: list[str]) -> int:
    return main(["train", *args, *QUICK])


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"), n_train_per_class=24, n_test_per_class=6)


@pytest.fixture(scope="module")
def vgg_run(cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vgg"
    assert _train(["--data", str(cifar), "--recipe", "vgg3-bn-l2-dropout-aug", "--epochs", "2",
                   "--batch-size", "16", "--seed", "3", *TINY_VGG, "--out", str(out)]) == 0
    return out


def _jpeg(tmp_path, img: np.ndarray, name: str = "probe.jpg"):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    path = tmp_path / name
    path.write_bytes(buf.getvalue())
    return path


def test_train_writes_run_files_and_package(vgg_run, cifar):
    for name in ("run.json", "history.csv", "history.json", "report.md", "metrics.json", "learning_curves.png",
                 "confusion_matrix.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (vgg_run / name).is_file(), name
    pkg = load_package(vgg_run / "package")
    assert pkg.labels == CLASSES and pkg.name == "cifar10-vgg3-bn-l2-dropout-aug"
    spec = pkg.spec
    assert (spec.input_size, spec.resize_mode, spec.crop_pct, spec.grayscale) == (32, "squash", 1.0, False)
    x, _ = class_images(24, seed=1)  # the training images: the spec carries their statistics
    np.testing.assert_allclose(spec.mean, (x / 255).mean(axis=(0, 1, 2)), atol=1e-4)
    prov = pkg.meta.provenance
    assert prov.architecture == "vgg3" and prov.task == "train" and prov.training["recipe"] == "vgg3-bn-l2-dropout-aug"
    assert prov.dataset is not None and prov.dataset.name == "cifar10"
    assert prov.training["epochs"] == 2.0 and prov.training["seed"] == 3
    metrics = json.loads((vgg_run / "metrics.json").read_text())
    assert prov.metrics["test_accuracy"] == metrics["accuracy"] and metrics["n"] == 24
    report = (vgg_run / "report.md").read_text()
    assert "## Test results" in report and "learning_curves.png" in report and "| airplane |" in report


def test_package_logits_equal_checkpoint_logits(vgg_run, tmp_path, capsys):
    xt, _ = class_images(6, seed=2)
    path = _jpeg(tmp_path, xt[0])
    engine = OnnxEngine(load_package(vgg_run / "package"))
    x = prepare(path.read_bytes(), engine.spec)[None]
    model = model_from_checkpoint(load_checkpoint(vgg_run / "checkpoints" / "last.pt"))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.logits(x), ref, rtol=1e-4, atol=1e-4)
    # The CLI a user runs gives the same probabilities.
    capsys.readouterr()
    assert main(["predict", "--model", str(vgg_run / "package"), "--json", "--top-k", "4", str(path)]) == 0
    preds = json.loads(capsys.readouterr().out)[0]["predictions"]
    probs = softmax(ref)[0]
    for p in preds:
        assert p["label"] == CLASSES[p["index"]]
        assert p["score"] == pytest.approx(float(probs[p["index"]]), abs=1e-5)


def test_evaluate_package_and_checkpoint(vgg_run, cifar, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "ev"
    assert main(["evaluate", str(vgg_run / "package"), "--data", str(cifar), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "precision" in text and "recall" in text
    for cls in CLASSES:
        assert cls in text
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    from_package = json.loads((out / "metrics.json").read_text())
    assert np.asarray(from_package["confusion"]).sum() == 24
    assert from_package["accuracy"] == json.loads((vgg_run / "metrics.json").read_text())["accuracy"]
    assert main(["evaluate", str(vgg_run / "checkpoints" / "last.pt"), "--data", str(cifar), "--json",
                 "--out", str(tmp_path / "ev2"), "--no-progress"]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)
    assert from_ckpt["confusion"] == from_package["confusion"]


def test_fast_recipe_exports_its_test_time_augmentation(cifar, tmp_path):
    out = tmp_path / "fast"
    assert _train(["--data", str(cifar), "--recipe", "fast", "--epochs", "1", "--batch-size", "32",
                   "--set", "net.widths=8,16,16", "--set", "opt.whiten_samples=64", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    served = model_from_checkpoint(ckpt)
    assert isinstance(served, TTA) and served.level == 2
    engine = OnnxEngine(load_package(out / "package"))
    xt, _ = class_images(6, seed=2)
    x = np.stack([prepare(_jpeg(tmp_path, xt[i], f"{i}.jpg").read_bytes(), engine.spec) for i in range(4)])
    with torch.no_grad():
        with_tta = served(torch.from_numpy(x)).numpy()
        without = served.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.logits(x), with_tta, rtol=1e-4, atol=1e-5)
    assert np.abs(with_tta - without).max() > 1e-4  # the averaging is really in the graph


def test_image_folder_with_corrupt_file_and_resume(tmp_path, capsys):
    data = write_image_folder(tmp_path / "photos", {"train": 8, "test": 3})
    (data / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "run"
    common = ["--data", str(data), "--recipe", "vgg1", "--batch-size", "8", *TINY_VGG,
              "--cache-dir", str(tmp_path / "cache")]
    assert _train([*common, "--epochs", "2", "--time-budget", "0.001", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image file" in err and "broken.jpg" in err
    first = json.loads((out / "history.json").read_text())
    assert first["stopped"] == "time_budget" and first["epochs"][-1]["partial"]
    assert main(["train", "--out", str(out), "--data", str(data)]) == 2  # refuses to overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--time-budget", "1h", *QUICK]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history["stopped"] == "completed" and [r["epoch"] for r in history["epochs"]] == [1, 2]
    assert json.loads((out / "run.json").read_text())["dataset"]["skipped"][0][0].endswith("broken.jpg")
    report = (out / "report.md").read_text()
    assert "1 unreadable file(s) skipped" in report


def test_fashion_idx_trains_a_grayscale_package(tmp_path):
    data = write_fashion_idx(tmp_path / "fashion-mnist", n_train_per_class=4, n_test_per_class=2)
    out = tmp_path / "run"
    assert _train(["--data", str(data), "--recipe", "vgg3-bn", "--epochs", "1", "--batch-size", "8",
                   *TINY_VGG, "--out", str(out)]) == 0
    pkg = load_package(out / "package")
    assert pkg.spec.grayscale and pkg.spec.channels == 1 and pkg.spec.input_size == 28
    assert pkg.labels[0] == "T-shirt/top" and len(pkg.labels) == 10
    engine = OnnxEngine(pkg)
    x = prepare(_jpeg(tmp_path, np.full((40, 30, 3), 128, np.uint8)).read_bytes(), pkg.spec)[None]
    assert x.shape == (1, 1, 28, 28) and engine.logits(x).shape == (1, 10)


def test_user_errors_are_one_line(cifar, tmp_path, capsys):
    cases = [
        (["--data", str(cifar), "--recipe", "nope", "--out", str(tmp_path / "a")], "unknown recipe"),
        (["--data", str(cifar), "--set", "opt.nope=1", "--out", str(tmp_path / "b")], "unknown recipe setting"),
        (["--data", str(cifar), "--recipe", "vgg", "--arch", "fast", "--out", str(tmp_path / "c")], "does not fit"),
        (["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "d")], "no such dataset"),
        (["--data", str(cifar), "--time-budget", "soon", "--out", str(tmp_path / "e")], "duration"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert _train(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_list_recipes(capsys):
    assert main(["train", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("vgg1", "vgg2", "vgg3", "vgg3-bn", "vgg3-bn-l2", "vgg3-bn-l2-dropout", "vgg3-bn-l2-dropout-aug",
                 "vgg", "fast"):
        assert f"== {name}:" in out


@pytest.mark.slow
def test_experiment_seed_ladder(cifar, tmp_path, capsys):
    out = tmp_path / "ladder"
    args = ["experiment", "seed-ladder", "--data", str(cifar), "--out", str(out), "--steps", "vgg1,vgg3-bn",
            "--epochs", "1", *TINY_VGG, "--precision", "fp32", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "1 VGG block" in text and "+ BatchNorm" in text
    report = (out / "report.md").read_text()
    assert "| 1 VGG block | `vgg1` |" in report and "vgg3-bn/learning_curves.png" in report
    assert (out / "ladder_curves.png").is_file() and (out / "vgg1" / "learning_curves.png").is_file()
    rows = json.loads((out / "ladder.json").read_text())
    assert [r["recipe"] for r in rows] == ["vgg1", "vgg3-bn"] and all(r["test_acc"] is not None for r in rows)
    # A second call finds both steps done and only rewrites the report.
    assert main(args) == 0
    assert "done already" in capsys.readouterr().err
