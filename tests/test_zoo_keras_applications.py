"""Keras-applications weight files for ResNet50, InceptionV3, Xception and MobileNetV2 load into the
zoo entries and give Keras' own answers.

The reference is Keras itself (torch backend): ``keras.applications.<Model>(weights=None)`` with
realistic random weights (see ``keras_support``), written in the layout of the published
``*_tf_dim_ordering_tf_kernels(_notop).h5`` files, run with ``model.predict`` on the real sample
photos after the documented ``load_img`` + ``preprocess_input``. imgclf loads the same file with
``zoo.build(name, weights=FILE)`` and the spec ``preprocess_for`` picks, decoding the photos its
own way.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("keras") is None:
    pytest.skip("the Keras extra (pip install imgclf[keras]) is not installed", allow_module_level=True)
os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported

import keras_support as ks  # noqa: E402

from imgclf import cli, zoo  # noqa: E402
from imgclf.engine import softmax  # noqa: E402
from imgclf.pipeline import prepare  # noqa: E402
from imgclf.preprocess import PreprocessSpec, caffe_spec  # noqa: E402
from imgclf.zoo.keras import tf_spec  # noqa: E402
from imgclf.zoo.loading import preprocess_for  # noqa: E402
from imgclf.zoo.weights import WeightsError  # noqa: E402

# Keras' variables trip NumPy 2's copy-keyword deprecation thousands of times; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPECS = {"resnet50": caffe_spec(224), "inception_v3": tf_spec(299), "xception": tf_spec(299),
         "mobilenet_v2": tf_spec(224)}
FILES = {  # the names Keras publishes them under
    "resnet50": ("resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                 "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "inception_v3": ("inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                     "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception": ("xception_weights_tf_dim_ordering_tf_kernels.h5",
                 "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet_v2": ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
                     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
}
# The big 299 px networks take most of the time: the quick run checks the two 224 px ones.
FAMILIES = ["resnet50", "mobilenet_v2",
            pytest.param("inception_v3", marks=pytest.mark.slow), pytest.param("xception", marks=pytest.mark.slow)]


class Made:
    """One family's Keras models, their weight files and Keras' outputs on the photos."""

    def __init__(self, name: str, photos: list[Path], root: Path) -> None:
        self.name, self.photos = name, photos
        x = ks.keras_input(photos, name)
        top = ks.build(name, include_top=True, calibration=x)
        notop = ks.without_top(top, name)
        self.top_h5 = ks.save_weights_h5(top, root / FILES[name][0])
        self.notop_h5 = ks.save_weights_h5(notop, root / FILES[name][1])
        self.probs = ks.predict(top, x)  # Keras' softmax output
        self.features = ks.predict(notop, x)  # pooling='avg'


@pytest.fixture(scope="module")
def made(sample_jpegs, tmp_path_factory):
    cache: dict[str, Made] = {}
    photos = [sample_jpegs[k] for k in sorted(sample_jpegs)]

    def get(name: str) -> Made:
        if name not in cache:
            cache[name] = Made(name, photos, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def run(model: torch.nn.Module, photos: list[Path], spec: PreprocessSpec) -> np.ndarray:
    x = np.stack([prepare(p.read_bytes(), spec) for p in photos])
    with torch.inference_mode():
        return model(torch.from_numpy(x)).double().numpy()


def assert_same_predictions(probs: np.ndarray, ref: np.ndarray) -> None:
    for got, want in zip(probs, ref, strict=True):
        assert list(np.argsort(-got)[:5]) == list(np.argsort(-want)[:5])
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_keras_weights_give_keras_predictions(name, made):
    m = made(name)
    entry = zoo.get(name)
    spec = preprocess_for(entry, m.top_h5)
    assert spec == SPECS[name]
    assert m.probs.max(axis=1).min() > 0.01  # 10x uniform: peaked enough that the top-5 order means something
    model = zoo.build(name, weights=str(m.top_h5))
    assert_same_predictions(softmax(run(model, m.photos, spec).astype(np.float32)), m.probs)


@pytest.mark.parametrize("name", FAMILIES)
def test_notop_weights_give_keras_features(name, made):
    m = made(name)
    model = zoo.build(name, weights=str(m.notop_h5), include_top=False)
    got = run(model, m.photos, preprocess_for(zoo.get(name), m.notop_h5))
    assert got.shape == m.features.shape
    np.testing.assert_allclose(got, m.features, rtol=1e-4, atol=1e-4 * np.abs(m.features).max())
    # A full file drops its classifier the same way.
    full = zoo.build(name, weights=str(m.top_h5), include_top=False)
    np.testing.assert_allclose(run(full, m.photos[:1], SPECS[name]), got[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_notop_file_cannot_classify(name, made):
    with pytest.raises(WeightsError, match=r"include_top=False \('notop'\) file"):
        zoo.build(name, weights=str(made(name).notop_h5))


def _torch_quirk(name: str, model: torch.nn.Module) -> str:
    """Undo one Keras difference in a loaded Keras variant, as a torch-layout model would have it."""
    from torch import nn

    from imgclf.zoo.tf_padding import Conv2dSame, MaxPool2dSame

    if name == "resnet50":  # torchvision strides the 3x3 convolution, Keras the first 1x1
        for stage in (model.layer2, model.layer3, model.layer4):
            stage[0].conv1.stride, stage[0].conv2.stride = (1, 1), (2, 2)
        return "stride on the 3x3"
    if name == "inception_v3":
        for block in model.modules():
            if hasattr(block, "pool_include_pad"):
                block.pool_include_pad = True
        return "average pools counting the padding"
    if name == "xception":
        for block in model.modules():
            if isinstance(block, nn.Sequential) and isinstance(block[-1], MaxPool2dSame):
                block[-1] = nn.MaxPool2d(3, 2, 1)
        return "symmetric max-pool padding"
    for conv in model.modules():
        if isinstance(conv, Conv2dSame):
            conv.padding = (1, 1)
            conv.forward = nn.Conv2d.forward.__get__(conv)  # type: ignore[method-assign]
    return "symmetric strided-conv padding"


@pytest.mark.parametrize("name", FAMILIES)
def test_each_keras_difference_matters(name, made):
    """The comparison above is sensitive: one torch habit in place of Keras' moves the outputs."""
    m = made(name)
    model = zoo.build(name, weights=str(m.top_h5))
    what = _torch_quirk(name, model)
    probs = softmax(run(model, m.photos, SPECS[name]).astype(np.float32))
    assert np.abs(probs - m.probs).max() > 1e-3, what


def test_cli_predict_and_export_with_keras_weights(made, tmp_path, capsys):
    import onnxruntime as ort

    m = made("mobilenet_v2")
    photo = m.photos[0]
    assert cli.main(["predict", str(photo), "--model", "mobilenet_v2", "--weights", str(m.top_h5),
                     "--json", "-k", "5", "--no-progress"]) == 0
    preds = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert [p["index"] for p in preds] == list(np.argsort(-m.probs[0])[:5])
    np.testing.assert_allclose([p["score"] for p in preds], np.sort(m.probs[0])[::-1][:5], atol=1e-4)

    out = tmp_path / "pkg"
    assert cli.main(["export", "mobilenet_v2", "--weights", str(m.top_h5), "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    assert spec == tf_spec(224)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.stack([prepare(p.read_bytes(), spec) for p in m.photos])
    logits = sess.run(None, {meta["input"]["name"]: x})[0]
    assert_same_predictions(softmax(logits), m.probs)


def test_input_size_follows_the_mobilenet_file_name():
    entry = zoo.get("mobilenet_v2")
    assert preprocess_for(entry, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160.h5") == tf_spec(160)
    assert preprocess_for(entry, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5") == tf_spec(96)
    assert preprocess_for(entry, "my_mobilenet.h5") == tf_spec(224)


def test_file_of_another_family_is_refused(made):
    with pytest.raises(WeightsError, match="resnet50_weights_tf_dim_ordering_tf_kernels.h5 does not fit mobilenet_v2"):
        zoo.build("mobilenet_v2", weights=str(made("resnet50").top_h5))


@pytest.mark.parametrize("name", ["resnet50", "inception_v3", "xception", "mobilenet_v2"])
def test_layout_covers_every_keras_layer(name):
    """Structure only (quick for every family): each weighted layer of the Keras application, with
    or without top, lands in a torch parameter of the right shape, and nothing is left over."""
    from imgclf.zoo.keras import KerasH5, keras_layout, keras_to_torch

    layout = keras_layout(zoo.get(name))
    for include_top in (True, False):
        model = ks.APPLICATIONS[name][0](weights=None, include_top=include_top)
        weighted = [la for la in model.layers if la.weights]
        h5 = KerasH5(Path(f"{name}.h5"), {la.name: [np.asarray(w.numpy()) for w in la.weights] for la in weighted},
                     {la.name: [w.path for w in la.weights] for la in weighted}, None)
        state = keras_to_torch(h5, layout, name, include_top=include_top)
        net = layout.build()
        if not include_top:
            net.remove_top()
        own = net.state_dict()
        assert sorted(state) == sorted(k for k in own if not k.endswith("num_batches_tracked"))
        for key, value in state.items():
            assert value.shape == tuple(own[key].shape), key


def test_file_of_a_family_without_names_is_refused(made):
    """InceptionV3 names no conv layer: a ResNet50 file (which has a 'predictions' layer too) still
    does not pass for one."""
    with pytest.raises(WeightsError, match=r"does not fit inception_v3: 0 auto-named conv layers \(conv2d_N\), "
                                           r"expected 94 \(file has: conv1_conv"):
        zoo.build("inception_v3", weights=str(made("resnet50").top_h5))


@pytest.mark.parametrize(("name", "old"), [("mobilenet_v2", "Logits"), ("resnet50", "probs")])
def test_classifier_under_its_keras_applications_1_name(name, old, made, tmp_path):
    """The published files were written by keras-applications 1.0, which named some classifiers
    differently ('Logits', 'probs'): they load all the same."""
    import shutil

    import h5py

    m = made(name)
    path = tmp_path / m.top_h5.name
    shutil.copy(m.top_h5, path)
    with h5py.File(path, "a") as f:
        f.move("predictions", old)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = np.array([(old if n == "predictions" else n).encode() for n in names])
    model = zoo.build(name, weights=str(path))
    assert_same_predictions(softmax(run(model, m.photos, SPECS[name]).astype(np.float32)), m.probs)
