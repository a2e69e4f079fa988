"""Every engine and precision this CPU offers gives fp32's top-1 on the real sample photos; the
engines' thread settings stay civil on a shared machine; the server reports what it runs on.

Needs the ``openvino`` extra (skipped with the reason without it; the missing-extra error itself is
tested in test_engine_choice.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from engine_support import copy_package, drop_gates, quantize
from fastapi.testclient import TestClient
from serve_support import wait_ready

pytest.importorskip("openvino", reason="the OpenVINO engine needs the openvino extra: pip install 'imgclf[openvino]'")

from imgclf.engines import choice as choice_mod  # noqa: E402
from imgclf.engines.choice import EngineChoice, build, open_engine  # noqa: E402
from imgclf.engines.cpu import cpu_caps  # noqa: E402
from imgclf.engines.onnxruntime import OnnxEngine  # noqa: E402
from imgclf.engines.openvino import OpenVINOEngine  # noqa: E402
from imgclf.package import load_package  # noqa: E402
from imgclf.pipeline import prepare  # noqa: E402
from imgclf.server import ServerConfig, create_app  # noqa: E402

pytestmark = pytest.mark.slow
CAPS = cpu_caps()


@pytest.fixture(scope="module")
def lite0_copy(lite0_package, tmp_path_factory):
    """A private copy of the Lite0 package with its int8 variant from ``imgclf quantize``."""
    root = copy_package(lite0_package, tmp_path_factory.mktemp("engines") / "lite0")
    quantize(root)
    return root


@pytest.fixture(scope="module")
def photo_batch(lite0_package, sample_jpegs):
    spec = load_package(lite0_package).spec
    names = sorted(sample_jpegs)
    return names, np.stack([prepare(sample_jpegs[n].read_bytes(), spec) for n in names])


def runnable() -> list[tuple[str, str]]:
    """Every engine and precision this CPU has instructions for."""
    out = [("openvino", "fp32"), ("onnxruntime", "int8"), ("openvino", "int8")]
    if CAPS.bf16:
        out.append(("openvino", "bf16"))
    return out


@pytest.mark.parametrize(("engine", "precision"), runnable())
def test_every_engine_and_precision_gives_the_fp32_top1(lite0_copy, photo_batch, engine, precision):
    names, batch = photo_batch
    package = load_package(lite0_copy)
    reference = OnnxEngine(package, threads=1).probabilities(batch)
    run = load_package(lite0_copy / "int8") if precision == "int8" else package
    candidate = build(EngineChoice(engine, precision, "test", run), threads=1)
    assert (candidate.engine_name, candidate.precision) == (engine, precision)
    probs = candidate.probabilities(batch)
    assert probs.shape == reference.shape
    assert dict(zip(names, probs.argmax(1).tolist(), strict=True)) == \
        dict(zip(names, reference.argmax(1).tolist(), strict=True))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)


def test_openvino_fp32_matches_onnx_runtime_closely(lite0_package, photo_batch):
    _, batch = photo_batch
    package = load_package(lite0_package)
    np.testing.assert_allclose(OpenVINOEngine(package, threads=1).logits(batch),
                               OnnxEngine(package, threads=1).logits(batch), atol=2e-3)


def test_any_batch_size_runs_on_one_compiled_model(lite0_package, photo_batch):
    _, batch = photo_batch
    engine = OpenVINOEngine(load_package(lite0_package), threads=1)
    full = engine.logits(batch)
    for n in (1, 3):
        np.testing.assert_allclose(engine.logits(batch[:n]), full[:n], atol=1e-4)


def test_engines_released_out_of_order_leave_the_threads_signal_stack_valid(lite0_package):
    # OpenVINO installs its own alternate signal stack when it compiles and puts back the one it found
    # when released; released in build order, the thread was left on a freed stack and the next
    # SIGINT/SIGTERM crashed the process.
    import gc

    from imgclf.engines.signal_stack import current

    before = current()
    first = OpenVINOEngine(load_package(lite0_package))
    second = OpenVINOEngine(load_package(lite0_package))
    assert current() == before
    del first
    gc.collect()
    del second
    gc.collect()
    assert current() == before


def test_thread_settings_are_applied_and_civil(lite0_package):
    package = load_package(lite0_package)
    ov = OpenVINOEngine(package, precision="bf16" if CAPS.bf16 else "fp32", threads=1)
    assert int(ov.applied("INFERENCE_NUM_THREADS")) == 1
    assert int(ov.applied("NUM_STREAMS")) == 1  # one stream: batches run one after another
    assert ov.applied("ENABLE_CPU_PINNING") is False
    assert ("bfloat16" if CAPS.bf16 else "float32") in str(ov.applied("INFERENCE_PRECISION_HINT"))
    ort = OnnxEngine(package, threads=1)
    opts = ort.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # Torch's OpenMP threads (the zoo in predict) must not busy-wait either: the CLI and tests set this.
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"


def test_the_cli_keeps_openmp_passive(monkeypatch):
    from imgclf.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert main(["models"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.skipif(not CAPS.bf16, reason="this CPU has no bf16 instructions (avx512_bf16 or amx_bf16)")
def test_bf16_is_gated_on_first_use_and_recorded(lite0_copy, tmp_path):
    package_dir = copy_package(lite0_copy, tmp_path / "lite0")
    engine, choice = open_engine(load_package(package_dir), "openvino", "bf16", threads=1)
    # Measured on the six photos shipped with imgclf; passed or not, it is recorded and reported.
    assert choice.gate is not None and choice.gate.images == 6 and not choice.gate.labelled
    assert ("gate passed" if choice.gate.passed else "gate FAILED") in choice.reason
    recorded = load_package(package_dir).meta.gate_for("openvino", "bf16")
    assert recorded == choice.gate
    # The next load reads the record instead of measuring again.
    measured = []
    again = choice_mod.choose(load_package(package_dir), "openvino", "bf16",
                                            measure=lambda *a: measured.append(a))
    assert measured == [] and again.gate == recorded


@pytest.mark.skipif(not CAPS.bf16, reason="this CPU has no bf16 instructions (avx512_bf16 or amx_bf16)")
def test_a_read_only_package_keeps_the_gate_in_memory(lite0_copy, tmp_path, monkeypatch):
    package_dir = copy_package(lite0_copy, tmp_path / "lite0")
    before = (package_dir / "model.json").read_bytes()
    monkeypatch.setattr(choice_mod.os, "access", lambda path, mode: False)  # root ignores chmod
    package = load_package(package_dir)
    _, choice = open_engine(package, "openvino", "bf16", threads=1)
    assert choice.gate is not None and package.meta.gate_for("openvino", "bf16") == choice.gate
    assert load_package(package_dir).meta.gate_for("openvino", "bf16") is None
    assert (package_dir / "model.json").read_bytes() == before


def test_the_server_reports_its_engine_and_precision(lite0_copy, sample_jpegs, tmp_path):
    package_dir = copy_package(lite0_copy, tmp_path / "lite0")
    raw = json.loads((package_dir / "model.json").read_text())
    with TestClient(create_app(ServerConfig(models=(str(package_dir),), engine="openvino", precision="fp32",
                                            ort_threads=1))) as client:
        wait_ready(client)
        info = client.get(f"/v1/models/{raw['name']}").json()
        assert (info["engine"], info["precision"]) == ("openvino", "fp32")
        assert info["engine_reason"] == "as asked"
        metrics = client.get("/metrics").text
        assert f'imgclf_model_engine_info{{engine="openvino",model="{raw["name"]}",precision="fp32"}} 1.0' in metrics
        r = client.post("/predict?top_k=1", content=sample_jpegs["chelsea"].read_bytes(),
                        headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["predictions"][0][0]["index"] in range(281, 286)


def test_quantize_records_a_gate_per_engine_and_auto_follows_them(lite0_copy):
    gates = {(g.engine, g.precision): g for g in load_package(lite0_copy / "int8").meta.gates}
    assert set(gates) == {("onnxruntime", "int8"), ("openvino", "int8")}
    _, choice = open_engine(load_package(lite0_copy), "auto", "auto", threads=1)
    if CAPS.int8 and gates["openvino", "int8"].passed:
        assert (choice.engine, choice.precision) == ("openvino", "int8")
        assert choice.package.path == lite0_copy / "int8"
    elif CAPS.int8 and gates["onnxruntime", "int8"].passed:
        assert (choice.engine, choice.precision) == ("onnxruntime", "int8")
    else:
        assert choice.precision != "int8" and "accuracy gate failed" in choice.reason


def test_auto_in_the_server_never_runs_an_ungated_int8(lite0_copy, tmp_path):
    package_dir = copy_package(lite0_copy, tmp_path / "lite0", int8=True)
    drop_gates(package_dir / "int8")  # no gate records: auto must not pick it
    with TestClient(create_app(ServerConfig(models=(str(package_dir),), engine="auto", ort_threads=1))) as client:
        wait_ready(client)
        info = client.get("/v1/models").json()["models"][0]
        assert info["precision"] != "int8"
        assert "no accuracy gate recorded" in info["engine_reason"]


def test_predict_and_evaluate_take_engine_and_precision(lite0_copy, sample_jpegs, capsys):
    from imgclf.cli import main

    photo = str(sample_jpegs["chelsea"])
    assert main(["predict", "--model", str(lite0_copy), "--engine", "openvino", "--precision", "int8",
                 "--json", "-k", "1", photo]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["predictions"][0]["index"] in range(281, 286)
    assert "imgclf: engine openvino int8 (as asked" in err
    assert main(["predict", "--model", str(lite0_copy), "--engine", "onnxruntime", "--precision", "bf16",
                 photo]) == 2
    assert "use --engine openvino --precision bf16" in capsys.readouterr().err


def test_evaluate_runs_on_the_engine_asked_for(lite0_copy, sample_jpegs, tmp_path, capsys):
    from imgclf.cli import main

    data = tmp_path / "data"
    for label, name in (("tiger cat", "chelsea"), ("espresso", "coffee")):
        (data / label).mkdir(parents=True)
        (data / label / f"{name}.jpg").write_bytes(sample_jpegs[name].read_bytes())
    assert main(["evaluate", str(lite0_copy), "--data", str(data), "--format", "folder", "--split", "train",
                 "--engine", "openvino", "--out", str(tmp_path / "eval"), "--json", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "imgclf: engine openvino fp32 (as asked)" in err
    ev = json.loads(out)
    assert (ev["n"], ev["accuracy"]) == (2, 1.0)


def test_evaluate_compares_two_models_on_the_engine_asked_for(lite0_copy, sample_jpegs, tmp_path, capsys):
    from imgclf.cli import main

    data = tmp_path / "data"
    for label, name in (("tiger cat", "chelsea"), ("espresso", "coffee")):
        (data / label).mkdir(parents=True)
        (data / label / f"{name}.jpg").write_bytes(sample_jpegs[name].read_bytes())
    assert main(["evaluate", str(lite0_copy), str(lite0_copy), "--data", str(data), "--format", "folder",
                 "--engine", "openvino", "--out", str(tmp_path / "cmp"), "--no-progress"]) == 0
    assert capsys.readouterr().err.count("imgclf: engine openvino fp32 (as asked)") == 2
