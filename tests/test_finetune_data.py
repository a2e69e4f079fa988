"""Dataset checks before fine-tuning: summary, seeded stratified split, corrupt files, warnings,
and one clear error line for folders that cannot be trained on (no model is loaded for those)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _finetune_folder import make_folder

from imgclf.cli import main
from imgclf.finetune.dataset import load_folder
from imgclf.preprocess import PreprocessSpec

SPEC = PreprocessSpec(input_size=32)


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))


def test_summary_counts_and_stratified_seeded_split(tmp_path):
    root = make_folder(tmp_path / "d", {"circles": 20, "squares": 10})
    data = load_folder(root, SPEC, val_fraction=0.2, seed=3, workers=1)
    assert data.classes == ["circles", "squares"]
    assert data.counts() == {"train": [16, 8], "val": [4, 2]}
    assert data.train.images.shape == (24, 3, 32, 32) and str(data.train.images.dtype) == "torch.uint8"
    assert not set(data.train.files) & set(data.val.files)
    again = load_folder(root, SPEC, val_fraction=0.2, seed=3, workers=1)
    other = load_folder(root, SPEC, val_fraction=0.2, seed=4, workers=1)
    assert again.val.files == data.val.files
    assert other.val.files != data.val.files
    text = data.summary()
    assert "2 classes" in text and "circles" in text and "total" in text and "stratified" in text


def test_train_val_test_layout_is_used_as_given(tmp_path):
    root = tmp_path / "d"
    for split, n in (("train", 12), ("val", 4), ("test", 3)):
        make_folder(root / split, {"circles": n, "squares": n}, seed=len(split))
    data = load_folder(root, SPEC, workers=1)
    assert data.val_from == "val folder"
    assert data.counts() == {"train": [12, 12], "val": [4, 4], "test": [3, 3]}


def test_corrupt_files_are_listed_and_skipped(tmp_path):
    root = make_folder(tmp_path / "d", {"circles": 12, "squares": 12}, corrupt={"squares": 2})
    data = load_folder(root, SPEC, workers=1)
    assert sorted(name for name, _ in data.skipped) == ["squares/broken0.jpg", "squares/broken1.jpg"]
    assert sum(sum(v) for v in data.counts().values()) == 24
    assert all("broken" not in f.name for f in data.all_files)
    text = data.summary()
    assert "skipped 2 unreadable file(s)" in text and "squares/broken1.jpg" in text and "not an image" in text


def test_few_images_and_imbalance_warnings(tmp_path):
    data = load_folder(make_folder(tmp_path / "d", {"circles": 40, "squares": 8}), SPEC, workers=1)
    text = " | ".join(data.warnings)
    assert "few images" in text and "squares (8)" in text
    assert "imbalanced" in text and "5.0x" in text
    balanced = load_folder(make_folder(tmp_path / "e", {"circles": 20, "squares": 20}), SPEC, workers=1)
    assert balanced.warnings == []


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("imgclf: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def _finetune(data: Path, out: Path) -> list[str]:
    return ["finetune", "--data", str(data), "--out", str(out), "--image-size", "32", "--no-progress", "--offline"]


@pytest.mark.parametrize("case", ["missing", "file", "one_class", "no_class", "empty_class", "all_corrupt",
                                  "class_all_corrupt"])
def test_bad_folders_get_one_clear_error(case, tmp_path, capsys):
    root = tmp_path / "d"
    expect = {
        "missing": "no such folder",
        "file": "is a file",
        "one_class": "at least two",
        "no_class": "no class folders",
        "empty_class": "no image files: squares",
        "all_corrupt": "none of the 6 image files",
        "class_all_corrupt": "no readable images in class(es) squares",
    }[case]
    if case == "file":
        root.write_bytes(b"x")
    elif case == "one_class":
        make_folder(root, {"circles": 5})
    elif case == "no_class":
        root.mkdir()
        (root / "loose.jpg").write_bytes(b"x")
    elif case == "empty_class":
        make_folder(root, {"circles": 5})
        (root / "squares").mkdir()
    elif case == "all_corrupt":
        for cls in ("a", "b"):
            (root / cls).mkdir(parents=True)
            for i in range(3):
                (root / cls / f"{i}.jpg").write_text("not a jpeg")
    elif case == "class_all_corrupt":
        make_folder(root, {"circles": 5})
        (root / "squares").mkdir()
        (root / "squares" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    line = _one_line_error(capsys, _finetune(root, tmp_path / "out"))
    assert expect in line, line
    assert not (tmp_path / "out").exists()  # nothing is written for a folder that cannot be used


def test_bad_options_are_refused(tmp_path, capsys):
    root = make_folder(tmp_path / "d", {"circles": 4, "squares": 4})
    line = _one_line_error(capsys, _finetune(root, tmp_path / "o") + ["--epochs", "0", "--freeze-epochs", "0"])
    assert "nothing to train" in line
    line = _one_line_error(capsys, _finetune(root, tmp_path / "o") + ["--base", "no_such_model"])
    assert "unknown model" in line
    (tmp_path / "o" / "training").mkdir(parents=True)
    line = _one_line_error(capsys, _finetune(root, tmp_path / "o") + ["--freeze-epochs", "1", "--epochs", "0"])
    assert "unfinished fine-tuning run" in line and "--resume" in line
