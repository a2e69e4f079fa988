"""The Python front door, ``imgclf.load`` and ``Classifier``: every input form gives the answer the
file gives, on the real EfficientNet-Lite0 package and real photos; bad inputs fail clearly; and
``import imgclf`` plus a package prediction never import torch. The README's Python example runs."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclf
from imgclf.classifier import Classifier, ImageInputError
from imgclf.engine import OnnxEngine, Prediction, to_probabilities
from imgclf.errors import UserError
from imgclf.images import ImageDecodeError, decode
from imgclf.package import load_package
from imgclf.pipeline import prepare

ROOT = Path(__file__).resolve().parents[1]
CAT = set(range(281, 286))
COFFEE = {967, 968, 504}


@pytest.fixture(scope="module")
def clf(lite0_package) -> Classifier:
    return imgclf.load(lite0_package)


def test_load_gives_a_classifier_with_the_package_metadata(clf, lite0_package):
    pkg = load_package(lite0_package)
    assert isinstance(clf, imgclf.Classifier)
    assert clf.name == "efficientnet_lite0" and clf.version == pkg.meta.version
    assert clf.labels == pkg.labels and len(clf.labels) == 1000
    assert clf.spec == pkg.spec and clf.output_kind == "logits"
    assert isinstance(clf.engine, OnnxEngine)


def test_one_input_gives_its_top_k_as_predictions(clf, sample_jpegs):
    top = clf.predict(sample_jpegs["chelsea"], k=3)
    assert len(top) == 3 and all(isinstance(p, Prediction) for p in top)
    assert top[0].index in CAT and top[0].label == clf.labels[top[0].index]
    assert top[0].score >= top[1].score >= top[2].score > 0
    assert clf.predict(str(sample_jpegs["chelsea"]), k=3) == top


def test_every_input_form_gives_the_answer_of_the_file(clf, sample_jpegs):
    path = sample_jpegs["coffee"]
    data = path.read_bytes()
    expected = clf.predict(path, k=5)
    assert expected[0].index in COFFEE
    pixels = np.asarray(Image.open(path).convert("RGB"))
    for form in (data, bytearray(data), Image.open(path), Image.open(io.BytesIO(data)), pixels):
        assert clf.predict(form, k=5) == expected, type(form)


def test_the_answer_is_the_serving_pipelines(clf, sample_jpegs, lite0_package):
    """Same probabilities as prepare() + the engine, the path the server and evaluation take."""
    engine = OnnxEngine(load_package(lite0_package))
    data = sample_jpegs["rocket"].read_bytes()
    probs = engine.probabilities(prepare(data, engine.spec)[None])
    np.testing.assert_allclose(clf.probabilities([data]), probs, rtol=1e-6)
    assert [p.index for p in clf.predict(data, k=5)] == list(np.argsort(-probs[0], kind="stable")[:5])


def test_a_list_gives_one_answer_per_input_in_order_across_batches(lite0_package, sample_jpegs):
    small = imgclf.load(lite0_package, batch_size=2)
    files = [sample_jpegs[n] for n in ("chelsea", "coffee", "rocket", "china", "flower")]
    answers = small.predict(files, k=2)
    assert len(answers) == 5 and all(len(a) == 2 for a in answers)
    assert answers == [small.predict(f, k=2) for f in files]
    assert answers[0][0].index in CAT and answers[1][0].index in COFFEE
    assert small.predict((files[1], files[0]), k=2) == [answers[1], answers[0]]
    assert small.predict([], k=2) == []


def test_grey_and_rgba_arrays_and_pil_modes_are_converted_like_files(clf, sample_jpegs):
    rgb = np.asarray(Image.open(sample_jpegs["chelsea"]).convert("RGB"))
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    as_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert clf.predict(grey) == clf.predict(as_rgb) == clf.predict(grey[:, :, None])
    opaque = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert clf.predict(opaque) == clf.predict(rgb)
    # Transparency goes onto white, as for a transparent PNG file.
    clear = opaque.copy()
    clear[..., 3] = 0
    png = io.BytesIO()
    Image.fromarray(clear).save(png, "PNG")
    assert clf.predict(clear) == clf.predict(png.getvalue()) == clf.predict(np.full_like(rgb, 255))
    # A CMYK PIL image (no PNG form) gives what the same image saved as a file gives.
    cmyk = Image.fromarray(rgb).convert("CMYK")
    tiff = io.BytesIO()
    cmyk.save(tiff, "TIFF")
    assert clf.predict(cmyk) == clf.predict(tiff.getvalue())


def test_exif_orientation_of_a_pil_image_is_applied_as_for_the_file(clf, sample_jpegs):
    rgb = Image.open(sample_jpegs["chelsea"]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", exif=exif, quality=95)
    opened = Image.open(io.BytesIO(buf.getvalue()))
    assert opened.size == rgb.size  # PIL leaves the pixels unrotated
    assert clf.predict(opened, k=5) == clf.predict(buf.getvalue(), k=5)
    assert decode(buf.getvalue()).shape[:2] == (rgb.size[0], rgb.size[1])  # rotated: width became height


def test_bad_inputs_fail_with_errors_that_say_what_to_do(clf, tmp_path):
    with pytest.raises(FileNotFoundError):
        clf.predict(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError):
        clf.predict(b"this is not an image")
    with pytest.raises(ImageInputError, match="batch"):
        clf.predict(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ImageInputError, match="astype"):
        clf.predict(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ImageInputError, match="no pixels"):
        clf.predict(np.zeros((0, 32, 3), np.uint8))
    with pytest.raises(ImageInputError):
        clf.predict(np.zeros((32, 32, 2), np.uint8))
    with pytest.raises(TypeError, match="file path, image bytes, a PIL image or a numpy array"):
        clf.predict(42)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="k must be at least 1"):
        clf.predict(b"x", k=0)
    assert issubclass(ImageInputError, UserError)


def test_k_is_capped_at_the_number_of_classes(clf, sample_jpegs):
    top = clf.predict(sample_jpegs["chelsea"], k=5000)
    assert len(top) == 1000 and sum(p.score for p in top) == pytest.approx(1.0, abs=1e-3)


def test_predict_files_reports_bad_files_and_classifies_the_rest(clf, sample_jpegs, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    files = [sample_jpegs["chelsea"], broken, tmp_path / "missing.jpg", tmp_path, sample_jpegs["coffee"]]
    results = clf.predict_files(files, k=3, batch_size=2, progress=False)
    assert [r.file for r in results] == [str(f) for f in files]
    assert results[0].predictions == clf.predict(sample_jpegs["chelsea"], k=3)
    assert results[4].predictions[0].index in COFFEE
    assert [r.error for r in results[2:4]] == ["no such file", "is a directory"]
    assert results[1].error and results[1].predictions is None
    assert results[1].to_dict() == {"file": str(broken), "error": results[1].error}
    assert results[0].to_dict()["predictions"][0] == results[0].predictions[0].to_dict()


def test_engine_choice_is_checked(lite0_package):
    with pytest.raises(UserError, match="OpenVINO, not torch"):
        imgclf.load(lite0_package, engine="torch")
    with pytest.raises(UserError, match="engine must be one of"):
        imgclf.load(lite0_package, engine="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="--weights applies to zoo models"):
        imgclf.load(lite0_package, weights="w.pth")
    with pytest.raises(UserError, match="unknown model 'resnet9000'"):
        imgclf.load("resnet9000")


@pytest.mark.slow
def test_a_zoo_name_runs_in_torch_and_on_onnx_runtime_with_the_same_answer(lite0_package, sample_jpegs,
                                                                            monkeypatch):
    from imgclf.engines.torch import TorchEngine

    monkeypatch.setenv("IMGCLF_HOME", str(lite0_package.parents[1]))  # the exported package is cached there
    in_torch = imgclf.load("efficientnet_lite0")
    on_ort = imgclf.load("efficientnet_lite0", engine="onnxruntime")
    assert isinstance(in_torch.engine, TorchEngine) and isinstance(on_ort.engine, OnnxEngine)
    assert on_ort.engine.package.path == lite0_package
    files = [sample_jpegs["chelsea"], sample_jpegs["coffee"]]
    np.testing.assert_allclose(in_torch.probabilities(files), on_ort.probabilities(files), atol=1e-4)


def test_output_kind_is_read_in_one_place():
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    probs = to_probabilities(logits, "logits")
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)
    assert probs.argmax() == 2
    np.testing.assert_array_equal(to_probabilities(probs, "probabilities"), probs)  # used as they are
    with pytest.raises(ValueError, match="output kind"):
        to_probabilities(logits, "scores")  # type: ignore[arg-type]


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=300)


def test_import_imgclf_is_light_and_a_package_prediction_never_imports_torch(lite0_package, sample_jpegs, tmp_path):
    code = (
        "import sys\n"
        "import imgclf\n"
        "light = not any(m in sys.modules for m in ('torch', 'onnxruntime', 'numpy', 'PIL'))\n"
        f"top = imgclf.load({str(lite0_package)!r}).predict({str(sample_jpegs['chelsea'])!r}, k=1)\n"
        "print(light, 'torch' in sys.modules, top[0].index)\n"
    )
    out = run_python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    light, torch_loaded, index = out.stdout.split()
    assert light == "True" and torch_loaded == "False" and int(index) in CAT


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's Python section has no python code block"
    return "\n".join(blocks)


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path):
    out = run_python(readme_python_example(), tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Classifier('efficientnet_lite0'") and lines[0].endswith(" 224 1000")
    assert len(lines) == 6 and all(re.match(r"^ *\d+\.\d%  \S", line) for line in lines[1:4])
    assert re.search(r"(tabby|tiger cat|Egyptian cat)$", lines[1])
    assert re.match(r"^PIL image -> (tabby|tiger cat|Egyptian cat)$", lines[4])
    assert re.match(r"^array -> (espresso|cup|coffee mug)$", lines[5])
    assert (tmp_path / "photos" / "chelsea.jpg").is_file()
