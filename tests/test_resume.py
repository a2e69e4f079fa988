"""``--resume`` means the same for ``imgclf train`` and ``imgclf finetune``: continue the run in
``--out`` from its last checkpoint with the options it was started with; options given again
replace the saved ones except those the checkpoints depend on; no run is overwritten without it."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest
from _finetune_folder import CLASSES, make_folder

import imgclf.finetune.stages as finetune_stages
from imgclf import zoo
from imgclf.cli import main
from imgclf.errors import UserError
from imgclf.finetune.state import RUN_DIR, STATE_FILE
from imgclf.finetune.state import resolve_options as finetune_options
from imgclf.package import load_package
from imgclf.train.run import RunOptions
from imgclf.train.run import resolve_options as train_options
from imgclf.zoo.weights import availability


def _train_run(tmp_path, **options):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"checkpoint")
    saved = {"data": str(tmp_path / "data"), "format": "auto", "recipe": "vgg3", "epochs": 2, "seed": 3,
             "time_budget": 10.0, "overrides": {"net.dense": 32}, **options}
    (out / "run.json").write_text(json.dumps({"options": saved}))
    return out


def _finetune_run(tmp_path, **options):
    out = tmp_path / "pkg"
    (out / RUN_DIR).mkdir(parents=True)
    saved = {"data": str(tmp_path / "photos"), "base": "efficientnet_lite0", "epochs": 2, "freeze_epochs": 3,
             "image_size": 64, "seed": 1, "lr": 0.01, "tta": 1, **options}
    (out / RUN_DIR / STATE_FILE).write_text(json.dumps({"options": saved, "stages": {}}))
    return out


def test_train_resume_reuses_saved_options_and_takes_new_ones(tmp_path):
    out = _train_run(tmp_path)
    opts = train_options(RunOptions(out=str(out), resume=True, time_budget=3600.0, overrides={"opt.lr": 0.1}))
    assert (opts.data, opts.recipe, opts.epochs, opts.seed) == (str(tmp_path / "data"), "vgg3", 2, 3)
    assert opts.time_budget == 3600.0 and opts.overrides == {"net.dense": 32, "opt.lr": 0.1}


def test_finetune_resume_reuses_saved_options_and_takes_new_ones(tmp_path):
    out = _finetune_run(tmp_path)
    opts = finetune_options({"out": str(out), "resume": True, "epochs": 5})
    assert (opts.data, opts.base, opts.image_size, opts.seed, opts.lr, opts.tta) == (
        str(tmp_path / "photos"), "efficientnet_lite0", 64, 1, 0.01, 1)
    assert opts.epochs == 5 and opts.freeze_epochs == 3 and opts.resume


@pytest.mark.parametrize("change", [{"data": "elsewhere"}, {"seed": 4}])
def test_both_refuse_to_change_what_the_checkpoints_depend_on(tmp_path, change):
    with pytest.raises(UserError, match=f"--resume cannot change .*--{next(iter(change))}"):
        train_options(RunOptions(out=str(_train_run(tmp_path)), resume=True, **change))
    with pytest.raises(UserError, match=f"--resume cannot change .*--{next(iter(change))}"):
        finetune_options({"out": str(_finetune_run(tmp_path)), "resume": True, **change})


def test_same_data_through_another_path_is_no_change(tmp_path, monkeypatch):
    out = _finetune_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert finetune_options({"out": str(out), "resume": True, "data": "photos"}).data == "photos"


def test_both_refuse_to_overwrite_a_run_without_resume(tmp_path, capsys):
    out = _train_run(tmp_path)
    assert main(["train", "--out", str(out), "--data", str(tmp_path)]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    out = _finetune_run(tmp_path)
    assert main(["finetune", "--out", str(out), "--data", str(tmp_path)]) == 2
    assert "already holds an unfinished fine-tuning run" in capsys.readouterr().err


def test_finetune_without_data_or_a_run_to_resume(tmp_path, capsys):
    assert main(["finetune", "--out", str(tmp_path / "new")]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["finetune", "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "no unfinished run" in capsys.readouterr().err


def test_the_python_api_resumes_by_the_same_rules(tmp_path):
    import imgclf

    with pytest.raises(UserError, match="--resume cannot change .*--seed"):
        imgclf.finetune(out=_finetune_run(tmp_path), resume=True, seed=4)
    with pytest.raises(UserError, match="--resume cannot change .*--seed"):
        imgclf.train(out=_train_run(tmp_path), resume=True, seed=4)
    with pytest.raises(UserError, match="no unfinished run"):
        imgclf.finetune(out=tmp_path / "new", resume=True)


@pytest.mark.slow
@pytest.mark.skipif(availability(zoo.get("efficientnet_lite0")) != "installed",
                    reason="the efficientnet-lite0 weights package is not installed")
def test_interrupted_finetune_continues_with_out_and_resume_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    data = make_folder(tmp_path / "shapes", {name: 8 for name in CLASSES})
    out = tmp_path / "pkg"
    real = finetune_stages.train_all

    def interrupted(*args, **kwargs):  # stage 2 runs, then stops as Ctrl-C would make it
        return dataclasses.replace(real(*args, **kwargs), stopped="interrupted")

    monkeypatch.setattr(finetune_stages, "train_all", interrupted)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["finetune", "--data", str(data), "--out", str(out), "--image-size", "48", "--freeze-epochs", "2",
                     "--epochs", "1", "--batch-size", "8", "--seed", "5", "--no-progress", "--offline"])
    assert code == 130 and f"imgclf finetune --out {out} --resume" in err.getvalue()
    assert (out / RUN_DIR / STATE_FILE).is_file() and not (out / "model.json").exists()
    monkeypatch.setattr(finetune_stages, "train_all", real)
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):
        assert main(["finetune", "--out", str(out), "--resume", "--offline"]) == 0
    assert "stage 1 (head) already done" in log.getvalue()
    pkg = load_package(out)
    assert not (out / RUN_DIR).exists() and pkg.spec.input_size == 48
    assert pkg.meta.provenance.training["seed"] == 5 and pkg.meta.provenance.training["epochs"] == 1
