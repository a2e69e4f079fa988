"""keras.applications models imported by imgclf give Keras' own answers.

For each base (random weights made here, saved as .h5 and as .keras), the package's probabilities
on the real sample photos are compared with ``model.predict`` fed by the documented
``keras.applications.<family>.preprocess_input``. Keras is given exactly the pixels imgclf's
decode and resize produced, so the comparison covers the model and the normalisation only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from imgclf.engine import OnnxEngine
from imgclf.importers.keras_detect import spec_for_mode
from imgclf.importers.keras_file import KerasImportError
from imgclf.preprocess import preprocess_batch, resize_and_crop
from imgclf.samples import sample_photos

try:
    from imgclf.importers.keras import import_keras, load_keras

    keras = load_keras()
except KerasImportError as exc:  # pragma: no cover - the keras extra is part of the dev install
    pytest.skip(f"Keras is not installed: {exc}", allow_module_level=True)

A = keras.applications
L = keras.layers


def _calibrate(model, features, dense, preprocess_input) -> None:
    """Scale the random head so its logits are O(1): random deep features can be huge, and a
    saturated softmax has no well-defined top-5 order."""
    size = model.inputs[0].shape[1]
    noise = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    scale = float(np.asarray(features.predict(preprocess_input(noise), verbose=0)).std()) + 1e-6
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / scale, bias])


def with_head(base, classes: int, preprocess_input, *, flatten: bool = False):
    """A fine-tuning head on the base's layers, as users write it: Model(base.input, head)."""
    x = L.Flatten()(base.output) if flatten else L.GlobalAveragePooling2D()(base.output)
    dense = L.Dense(classes, activation="softmax", name="predictions")
    model = keras.Model(base.input, dense(x))
    _calibrate(model, keras.Model(base.input, x), dense, preprocess_input)
    return model


def nested_with_head(base, classes: int, preprocess_input):
    """The other common shape: the (pooled) base nested as one layer of a Sequential."""
    dense = L.Dense(classes, activation="softmax")
    model = keras.Sequential([keras.Input(base.inputs[0].shape[1:]), base, L.Dropout(0.2), dense])
    _calibrate(model, base, dense, preprocess_input)
    return model


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Callable], Any]
    preprocess_input: Callable[[np.ndarray], np.ndarray]
    base: str
    mode: str
    labels: list[str] | None  # None: a 1000-way ImageNet head, labelled by imgclf


LABELS8 = [f"class{i}" for i in range(8)]
CASES = [
    # The seed user's model: VGG16 base, Flatten, a new Dense(2, softmax) head.
    Case("vgg16_catdog", lambda p: with_head(A.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3)),
                                             2, p, flatten=True),
         A.vgg16.preprocess_input, "VGG16", "caffe", ["cat", "dog"]),
    Case("vgg19", lambda p: with_head(A.VGG19(weights=None, include_top=False, input_shape=(128, 128, 3)), 8, p),
         A.vgg19.preprocess_input, "VGG19", "caffe", LABELS8),
    Case("resnet50", lambda p: nested_with_head(
        A.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(128, 128, 3)), 8, p),
         A.resnet50.preprocess_input, "ResNet50", "caffe", LABELS8),
    Case("inception_v3", lambda p: nested_with_head(
        A.InceptionV3(weights=None, include_top=False, pooling="avg", input_shape=(139, 139, 3)), 8, p),
         A.inception_v3.preprocess_input, "InceptionV3", "tf", LABELS8),
    Case("xception", lambda p: with_head(A.Xception(weights=None, include_top=False, input_shape=(128, 128, 3)),
                                         8, p),
         A.xception.preprocess_input, "Xception", "tf", LABELS8),
    # The full 1000-way top: labelled with ImageNet's classes without a labels file.
    Case("mobilenet_v2", lambda p: A.MobileNetV2(weights=None), A.mobilenet_v2.preprocess_input,
         "MobileNetV2", "tf", None),
    Case("efficientnet_b0", lambda p: nested_with_head(
        A.EfficientNetB0(weights=None, include_top=False, pooling="avg", input_shape=(128, 128, 3)), 8, p),
         A.efficientnet.preprocess_input, "EfficientNet", "raw", LABELS8),
]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return list(sample_photos().values())


@pytest.fixture(scope="module")
def saved(request, tmp_path_factory) -> dict[str, Any]:
    case: Case = request.param
    keras.utils.set_random_seed(0)
    model = case.build(case.preprocess_input)
    folder = tmp_path_factory.mktemp(case.id)
    files = {"h5": folder / f"{case.id}.h5", "keras": folder / f"{case.id}.keras"}
    for path in files.values():
        model.save(path)
    return {"case": case, "model": model, "files": files, "folder": folder}


@pytest.mark.slow
@pytest.mark.parametrize("saved", [pytest.param(c, id=c.id) for c in CASES], indirect=True)
def test_package_matches_keras_predict(saved, photos):
    case: Case = saved["case"]
    model = saved["model"]
    reference = None
    for fmt, path in saved["files"].items():
        report = import_keras(path, saved["folder"] / f"pkg-{fmt}", labels=case.labels)
        pkg = report.package
        assert report.base is not None and report.base.startswith(case.base), report.base
        assert pkg.spec == spec_for_mode(case.mode, model.inputs[0].shape[1]), report.preprocessing
        assert pkg.meta.output_kind == "probabilities"
        if case.labels is None:
            assert len(pkg.labels) == 1000 and pkg.labels[282] == "tiger cat"
        else:
            assert pkg.labels == case.labels
        spec = pkg.spec
        assert spec.input_size == model.inputs[0].shape[1] and spec.resize_mode == "squash"
        pixels = np.stack([resize_and_crop(im, spec) for im in photos])
        if reference is None:
            reference = np.asarray(model.predict(case.preprocess_input(pixels.astype(np.float32)), verbose=0))
        probs = OnnxEngine(pkg).probabilities(preprocess_batch(photos, spec))
        np.testing.assert_allclose(probs, reference, atol=1e-4, err_msg=f"{case.id} ({fmt})")
        k = min(5, probs.shape[1])
        assert (np.argsort(-probs, axis=1)[:, :k] == np.argsort(-reference, axis=1)[:, :k]).all(), fmt


def test_spec_for_each_mode_is_what_preprocess_input_does(photos):
    """The specs alone (no model): imgclf's normalisation equals preprocess_input to float precision."""
    for mode, fn in [("caffe", A.vgg16.preprocess_input), ("tf", A.mobilenet_v2.preprocess_input),
                     ("torch", A.densenet.preprocess_input), ("raw", A.efficientnet.preprocess_input)]:
        spec = spec_for_mode(mode, 96)
        pixels = np.stack([resize_and_crop(im, spec) for im in photos])
        ours = preprocess_batch(photos, spec).transpose(0, 2, 3, 1)
        theirs = np.asarray(fn(pixels.astype(np.float32)))
        np.testing.assert_allclose(ours, theirs, atol=2e-5 * max(1.0, float(np.abs(theirs).max())), err_msg=mode)


def test_base_is_detected_with_or_without_its_model_name(tmp_path):
    """A fine-tuned model built from the base's layers (Model(base.input, head)) keeps only layer
    names; a nested base keeps its model name. Both are recognised."""
    from imgclf.importers.keras_detect import detect_base

    base = A.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3))
    flat = keras.Model(base.input, L.Dense(3)(L.GlobalAveragePooling2D()(base.output)), name="my_model")
    assert detect_base(flat).base.name == "MobileNetV2"
    nested = keras.Sequential([keras.Input((96, 96, 3)), base, L.GlobalAveragePooling2D(), L.Dense(3)])
    found = detect_base(nested)
    assert found.base.name == "MobileNetV2" and found.variant.startswith("mobilenetv2_")
    plain = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(4, 3), L.GlobalAveragePooling2D(), L.Dense(3)])
    assert detect_base(plain) is None
    # A user's own model that merely carries an application's name is not that application.
    named = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(4, 3), L.GlobalAveragePooling2D(), L.Dense(3)],
                             name="vgg16")
    assert detect_base(named) is None


@pytest.mark.slow
def test_serve_keras_file_answers_cat_or_dog(tmp_path, sample_jpegs):
    """``imgclf serve --model catdog.h5``: imported once by the launcher, served, labels from the
    file beside the model."""
    import httpx2 as httpx
    from serve_support import live_server

    keras.utils.set_random_seed(0)
    base = A.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3), alpha=0.35)
    model = with_head(base, 2, A.mobilenet_v2.preprocess_input)
    path = tmp_path / "catdog.h5"
    model.save(path)
    (tmp_path / "catdog.labels.txt").write_text("cat\ndog\n")
    env = {"IMGCLF_HOME": str(tmp_path / "home")}
    with live_server("--model", str(path), env=env, ready_timeout_s=240) as server:
        maps = open(f"/proc/{server.proc.pid}/maps").read()
        assert "libtorch" not in maps  # the import ran in a child; the server never loaded torch
        assert "<title>imgclf" in httpx.get(server.url + "/").text  # the web page
        with open(sample_jpegs["chelsea"], "rb") as f:
            r = httpx.post(f"{server.url}/predict", files={"file": ("chelsea.jpg", f, "image/jpeg")}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "catdog"
        assert {p["label"] for p in body["predictions"][0]} == {"cat", "dog"}
    assert "importing" in server.output() and "catdog.h5" in server.output()
    cached = list((tmp_path / "home" / "packages" / "keras").glob("*/*"))
    assert [p.name for p in cached] == ["catdog"]
