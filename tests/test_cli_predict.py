"""``imgclf predict`` and ``imgclf models`` from a user's side: output formats, folders, broken files,
option bounds and errors. Runs the default model (EfficientNet-Lite0, shipped weights) on real photos."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from imgclf import resolve, zoo
from imgclf.cli import main
from imgclf.zoo.labels import imagenet_labels

CAT = set(range(281, 286))
COFFEE = {967, 968, 504}
ROW = re.compile(r"^ +\d+\.\d\d%  .+ \((\d+)\)$")


@pytest.fixture(scope="module")
def engines() -> dict:
    return {}


@pytest.fixture(autouse=True)
def reuse_engines(monkeypatch, engines):
    """Build each model once per module; the CLI still goes through the real resolution."""
    real = resolve.load_engine

    def cached(model, *, weights=None, threads=None, runtime="auto"):
        key = (model, weights, runtime)
        if key not in engines:
            engines[key] = real(model, weights=weights, threads=threads, runtime=runtime)
        return engines[key]

    monkeypatch.setattr(resolve, "load_engine", cached)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_lists_each_file_then_its_top5(capsys, sample_jpegs):
    files = [str(sample_jpegs["chelsea"]), str(sample_jpegs["coffee"])]
    code, out, err = run(capsys, "predict", *files)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 12 and lines[0] == files[0] and lines[6] == files[1]
    rows = [ROW.match(line) for line in lines[1:6] + lines[7:12]]
    assert all(rows), out
    assert int(rows[0].group(1)) in CAT and int(rows[5].group(1)) in COFFEE


def test_json_shape(capsys, sample_jpegs):
    files = [str(sample_jpegs["chelsea"]), str(sample_jpegs["coffee"])]
    code, out, _ = run(capsys, "predict", "--json", "--top-k", "3", *files)
    assert code == 0
    data = json.loads(out)
    labels = imagenet_labels()
    assert [r["file"] for r in data] == files
    for r in data:
        assert set(r) == {"file", "predictions"} and len(r["predictions"]) == 3
        for q in r["predictions"]:
            assert set(q) == {"index", "label", "score"}
            assert isinstance(q["index"], int) and isinstance(q["score"], float)
            assert q["label"] == labels[q["index"]] and 0.0 <= q["score"] <= 1.0
    assert data[0]["predictions"][0]["index"] in CAT
    assert data[1]["predictions"][0]["index"] in COFFEE


def test_folder_is_searched_recursively_for_images_only(capsys, tmp_path, sample_jpegs):
    shutil.copy(sample_jpegs["chelsea"], tmp_path / "b_cat.jpg")
    (tmp_path / "sub").mkdir()
    shutil.copy(sample_jpegs["coffee"], tmp_path / "sub" / "a_cup.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    code, out, _ = run(capsys, "predict", "--json", str(tmp_path))
    assert code == 0
    data = json.loads(out)
    assert sorted(r["file"] for r in data) == sorted([str(tmp_path / "b_cat.jpg"), str(tmp_path / "sub" / "a_cup.JPG")])
    by_name = {r["file"].rsplit("/", 1)[-1]: r["predictions"][0]["index"] for r in data}
    assert by_name["b_cat.jpg"] in CAT and by_name["a_cup.JPG"] in COFFEE


def test_batch_size_does_not_change_results(capsys, sample_jpegs):
    files = [str(p) for p in sample_jpegs.values()]
    _, one, _ = run(capsys, "predict", "--json", "--batch-size", "1", *files)
    _, many, _ = run(capsys, "predict", "--json", "--batch-size", "16", *files)
    a, b = json.loads(one), json.loads(many)
    assert [r["file"] for r in a] == files
    for ra, rb in zip(a, b, strict=True):
        assert [q["index"] for q in ra["predictions"]] == [q["index"] for q in rb["predictions"]]
        assert [q["score"] for q in ra["predictions"]] == pytest.approx([q["score"] for q in rb["predictions"]],
                                                                        abs=1e-5)


def test_bad_files_get_error_entries_and_the_rest_are_classified(capsys, tmp_path, sample_jpegs):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG at all")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(sample_jpegs["coffee"].read_bytes()[:200])
    missing = tmp_path / "missing.jpg"
    files = [str(sample_jpegs["chelsea"]), str(broken), str(truncated), str(missing), str(sample_jpegs["coffee"])]
    code, out, err = run(capsys, "predict", "--json", *files)
    assert code == 1
    data = json.loads(out)
    assert [r["file"] for r in data] == files
    assert data[0]["predictions"][0]["index"] in CAT
    assert data[4]["predictions"][0]["index"] in COFFEE
    for r in data[1:4]:
        assert set(r) == {"file", "error"} and r["error"]
    assert data[3]["error"] == "no such file"
    # One line on stderr per bad file, naming it.
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 3 and all(line.startswith("imgclf: error: ") for line in err_lines)
    assert str(broken) in err_lines[0] and str(missing) in err_lines[2]
    # The table shows the error in place.
    code, out, _ = run(capsys, "predict", str(broken), str(sample_jpegs["chelsea"]))
    assert code == 1 and out.splitlines()[1].startswith("  error: ")


@pytest.mark.parametrize("k", ["0", "-3"])
def test_top_k_below_one_is_rejected(capsys, sample_jpegs, k):
    code, out, err = run(capsys, "predict", "--top-k", k, str(sample_jpegs["chelsea"]))
    assert code == 2 and out == "" and err == "imgclf: error: --top-k must be at least 1\n"


def test_top_k_is_capped_at_the_number_of_classes(capsys, sample_jpegs):
    code, out, _ = run(capsys, "predict", "--json", "-k", "5000", str(sample_jpegs["chelsea"]))
    assert code == 0
    preds = json.loads(out)[0]["predictions"]
    assert len(preds) == 1000 and len({q["index"] for q in preds}) == 1000
    assert sum(q["score"] for q in preds) == pytest.approx(1.0, abs=1e-3)
    code, out, _ = run(capsys, "predict", "--json", "-k", "1", str(sample_jpegs["chelsea"]))
    assert len(json.loads(out)[0]["predictions"]) == 1


def test_unknown_model_is_one_line_and_exit_2(capsys, sample_jpegs):
    code, out, err = run(capsys, "predict", "--model", "resnet9000", str(sample_jpegs["chelsea"]))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("imgclf: error: unknown model 'resnet9000'")
    assert "efficientnet_lite0" in err  # the message lists the known names


def test_no_images_found_is_an_error(capsys, tmp_path):
    (tmp_path / "readme.txt").write_text("nothing to see")
    code, out, err = run(capsys, "predict", str(tmp_path))
    assert code == 2 and out == "" and "no image files found" in err


def test_models_json_lists_every_entry_with_availability(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert sorted(rows) == zoo.names()
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"):
        assert rows[name]["weights"] == "installed", name
    for name in ("resnet50", "squeezenet1_1"):
        assert rows[name]["weights"] == "needs download"
        assert rows[name]["weights_url"].startswith("https://download.pytorch.org/models/")
    for name, row in rows.items():
        entry = zoo.get(name)
        assert row["params"] == entry.num_params and row["input_size"] == entry.preprocess.input_size
        assert row["default"] == (name == "efficientnet_lite0")
    code, table, _ = run(capsys, "models")
    assert code == 0 and "efficientnet_lite0" in table and "4,652,008" in table and "(default)" in table
