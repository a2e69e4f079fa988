"""How the CLI ends: a user error is one line and exit 2, a bug is a traceback and exit 1.

Every user-facing error derives from ``imgclf.errors.UserError``; the CLI catches that root only,
so a ``KeyError`` or ``RuntimeError`` from a bug is never passed off as the user's mistake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf import cli
from imgclf.classifier import ImageInputError
from imgclf.commands import models as models_command
from imgclf.errors import UnknownModelError, UserError
from imgclf.package import PackageError
from imgclf.zoo.weights import WeightsError

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("imgclf: error: ") and message in err, err


def test_every_user_facing_error_type_derives_from_the_root():
    for cls in (PackageError, WeightsError, UnknownModelError, ImageInputError):
        assert issubclass(cls, UserError), cls
    # Kept builtin bases, for callers that catch those.
    assert issubclass(PackageError, ValueError) and issubclass(UnknownModelError, KeyError)
    assert str(UnknownModelError("unknown model 'x'")) == "unknown model 'x'"  # not quoted like a KeyError


def test_user_errors_are_one_line_and_exit_2(capsys, tmp_path, sample_jpegs):
    photo = str(sample_jpegs["chelsea"])
    (tmp_path / "net.onnx").write_bytes(b"onnx")
    cases = [
        (["predict", "--model", "resnet9000", photo], "unknown model 'resnet9000'"),
        (["predict", "--model", str(tmp_path / "nowhere"), photo], "does not exist"),
        (["predict", "--model", str(tmp_path), photo], "is not a model package"),
        (["predict", "--model", str(tmp_path / "net.onnx"), photo], "wrap it into a model package"),
        (["predict", "--model", photo, photo], "is not a readable checkpoint"),
        (["export", "resnet9000", "--out", str(tmp_path / "pkg")], "unknown model 'resnet9000'"),
        (["evaluate", "resnet9000", "--data", str(tmp_path)], "unknown model 'resnet9000'"),
        (["import", str(tmp_path / "x.onnx"), "--labels", photo, "--out", str(tmp_path / "p")], "is not UTF-8 text"),
    ]
    labels, bad_json = tmp_path / "labels.txt", tmp_path / "labels.json"
    labels.write_text("cat\ndog\n")
    bad_json.write_text('["cat", "dog"')
    for labels_file, message in ((labels, "ONNX file not found"), (bad_json, "not valid JSON")):
        argv = ["import", str(tmp_path / "missing.onnx"), "--labels", str(labels_file), "--out", str(tmp_path / "p")]
        cases.append((argv, message))
    for argv, message in cases:
        assert_one_line_error(*run(capsys, *argv), message)


def test_a_missing_file_the_user_named_is_one_line(capsys, monkeypatch):
    def missing(args):
        raise FileNotFoundError(2, "No such file or directory", "data/train.csv")

    monkeypatch.setattr(models_command, "run", missing)
    assert_one_line_error(*run(capsys, "models"), "no such file: data/train.csv")


@pytest.mark.parametrize("bug", [RuntimeError("engine exploded"), KeyError("labels"),
                                 FileNotFoundError("no file name attached"), ZeroDivisionError()])
def test_a_bug_prints_its_traceback_and_exits_1(capsys, monkeypatch, bug):
    def broken(args):
        raise bug

    monkeypatch.setattr(models_command, "run", broken)
    code, out, err = run(capsys, "models")
    assert code == 1 and out == ""
    assert err.startswith("Traceback (most recent call last):"), err
    assert f"{type(bug).__name__}" in err and "in broken" in err  # where it happened
    assert "internal error" in err.splitlines()[-1] and "imgclf: error:" not in err


def test_a_user_error_keeps_its_own_exit_code(capsys, monkeypatch):
    class Refused(UserError):
        exit_code = 3

    def refuse(args):
        raise Refused("the server is read-only")

    monkeypatch.setattr(models_command, "run", refuse)
    code, _, err = run(capsys, "models")
    assert code == 3 and err == "imgclf: error: the server is read-only\n"


def run_imgclf_process(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_real_process_exit_codes():
    ok = run_imgclf_process("import sys; from imgclf.cli import main; sys.exit(main(['models', '--json']))")
    assert ok.returncode == 0 and json.loads(ok.stdout)
    user = run_imgclf_process("import sys; from imgclf.cli import main; "
                              "sys.exit(main(['export', 'resnet9000', '--out', 'x']))")
    assert user.returncode == 2 and user.stderr.startswith("imgclf: error: unknown model 'resnet9000'")
    bug = run_imgclf_process(
        "import sys\n"
        "import imgclf.commands.models as m\n"
        "def run(args):\n"
        "    raise RuntimeError('injected bug')\n"
        "m.run = run\n"
        "from imgclf.cli import main\n"
        "sys.exit(main(['models']))\n"
    )
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and "RuntimeError: injected bug" in bug.stderr
