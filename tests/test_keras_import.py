"""Whole Keras models (.h5 / .keras) -> model packages: detection, refusals, caching, the CLI.

Small Keras models with random weights, saved both ways, are compared with Keras' own ``predict``
on the real sample photos; a tf.keras-2-style HDF5 file written by hand is compared with an
independent NumPy forward pass. The keras.applications bases are in test_keras_import_parity.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from imgclf import cli
from imgclf.engine import OnnxEngine
from imgclf.importers.keras_file import KerasImportError
from imgclf.preprocess import preprocess_batch, resize_and_crop
from imgclf.samples import sample_photos

try:
    from imgclf.importers.keras import import_keras, load_keras

    keras = load_keras()
except KerasImportError as exc:  # pragma: no cover - the keras extra is part of the dev install
    pytest.skip(f"Keras is not installed: {exc}", allow_module_level=True)

LABELS3 = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return list(sample_photos().values())


def tiny_cnn(*, rescale: bool = True, units: int = 3, activation: str | None = "softmax",
             size: int = 48, channels: int = 3, seed: int = 0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Rescaling(1 / 255.0)(inputs) if rescale else inputs
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(units, activation=activation)(x)
    return keras.Model(inputs, outputs, name="tiny")


def save_both(model, folder: Path, stem: str = "model") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"h5": folder / f"{stem}.h5", "keras": folder / f"{stem}.keras"}
    for path in paths.values():
        model.save(path)
    return paths


def keras_reference(model, pixels: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(pixels.astype(np.float32), verbose=0))


def package_outputs(package, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(the package's probabilities, the uint8 pixels imgclf's resize produced, NHWC)."""
    engine = OnnxEngine(package)
    pixels = np.stack([resize_and_crop(im, package.spec) for im in images])
    return engine.probabilities(preprocess_batch(images, package.spec)), pixels


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_model_with_own_rescaling_matches_keras(tmp_path, photos, fmt):
    model = tiny_cnn()
    path = save_both(model, tmp_path)[fmt]
    report = import_keras(path, tmp_path / "pkg", labels=LABELS3)
    pkg = report.package
    spec = pkg.spec
    # The model rescales itself: raw 0..255 pixels, Keras' load_img geometry.
    assert (spec.scale, spec.mean, spec.std, spec.channel_order) == (1.0, (0.0,) * 3, (1.0,) * 3, "RGB")
    assert (spec.input_size, spec.resize_mode, spec.interpolation) == (48, "squash", "nearest")
    assert "rescal" in report.preprocessing
    assert pkg.meta.output_kind == "probabilities" and pkg.labels == LABELS3
    prov = pkg.meta.provenance.to_dict()  # the record as model.json holds it
    assert prov["source"] == path.name and len(prov["source_sha256"]) == 64
    assert prov["keras_version"] == keras.__version__ and prov["saved_by_keras"] == keras.__version__
    assert prov["source_format"] == ("hdf5" if fmt == "h5" else "keras")
    probs, pixels = package_outputs(pkg, photos)
    np.testing.assert_allclose(probs, keras_reference(model, pixels), atol=1e-5)


@pytest.mark.parametrize("activation, kind", [("sigmoid", "probabilities"), (None, "logits")])
def test_one_unit_binary_head_becomes_two_classes(tmp_path, photos, activation, kind):
    model = tiny_cnn(units=1, activation=activation, seed=1)
    path = save_both(model, tmp_path)["keras"]
    pkg = import_keras(path, tmp_path / "pkg", labels=["cat", "dog"]).package
    assert pkg.meta.output_kind == kind and pkg.labels == ["cat", "dog"]
    probs, pixels = package_outputs(pkg, photos)
    ref = keras_reference(model, pixels)[:, 0]
    p_dog = ref if activation == "sigmoid" else 1 / (1 + np.exp(-ref))
    np.testing.assert_allclose(probs, np.stack([1 - p_dog, p_dog], axis=1), atol=1e-5)


def test_logits_head_without_known_preprocessing_needs_flags(tmp_path, capsys, photos):
    model = tiny_cnn(rescale=False, activation=None, seed=2)
    path = save_both(model, tmp_path)["h5"]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS3) + "\n")
    code, _, err = run_cli(capsys, "import", str(path), "--labels", str(labels), "--out", str(tmp_path / "p"))
    assert code == 2 and "cannot tell the model's preprocessing" in err and "--scale" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "import", str(path), "--labels", str(labels), "--out", str(tmp_path / "p"),
                             "--scale", str(1 / 255), "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
                             "--interpolation", "bilinear")
    assert code == 0, err
    assert "output logits" in out
    from imgclf.package import load_package

    pkg = load_package(tmp_path / "p")
    assert pkg.meta.output_kind == "logits" and pkg.meta.output_name == "logits"
    assert pkg.spec.mean == (0.5,) * 3 and pkg.spec.std == (0.25,) * 3 and pkg.spec.interpolation == "bilinear"
    logits, pixels = package_outputs(pkg, photos)
    ref = keras_reference(model, (pixels / 255.0 - 0.5) / 0.25)
    e = np.exp(ref - ref.max(axis=1, keepdims=True))
    np.testing.assert_allclose(logits, e / e.sum(axis=1, keepdims=True), atol=1e-5)


def test_layer_the_tracer_cannot_export_goes_through_torch_export(tmp_path, photos):
    """LayerNormalization's shapes defeat the TorchScript exporter; torch.export takes over, and the
    package still has a dynamic batch dimension (the import checks batches of 1, 2 and 3)."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs))
    x = keras.layers.LayerNormalization()(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    path = save_both(model, tmp_path)["keras"]
    pkg = import_keras(path, tmp_path / "pkg", labels=LABELS3).package
    probs, pixels = package_outputs(pkg, photos)
    assert probs.shape == (len(photos), 3)
    np.testing.assert_allclose(probs, keras_reference(model, pixels), atol=1e-5)


def test_grayscale_model(tmp_path, photos):
    model = tiny_cnn(channels=1, seed=3)
    path = save_both(model, tmp_path)["keras"]
    pkg = import_keras(path, tmp_path / "pkg", labels=LABELS3).package
    assert pkg.spec.grayscale and pkg.spec.channels == 1
    probs, pixels = package_outputs(pkg, photos)
    np.testing.assert_allclose(probs, keras_reference(model, pixels), atol=1e-5)


def test_size_flag_must_fit_a_fixed_input(tmp_path):
    path = save_both(tiny_cnn(), tmp_path)["keras"]
    with pytest.raises(KerasImportError, match="takes 48x48 images; --size 64 does not fit"):
        import_keras(path, tmp_path / "pkg", labels=LABELS3, overrides={"input_size": 64})


def test_label_count_must_match(tmp_path):
    path = save_both(tiny_cnn(), tmp_path)["h5"]
    with pytest.raises(KerasImportError, match="3 classes, but 2 labels"):
        import_keras(path, tmp_path / "pkg", labels=["a", "b"])
    with pytest.raises(KerasImportError, match="--labels FILE or in model.labels.txt"):
        import_keras(path, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_import_command_finds_the_labels_file_beside_the_model(tmp_path, capsys):
    path = save_both(tiny_cnn(), tmp_path, stem="shapes")["h5"]
    (tmp_path / "shapes.labels.txt").write_text("\n".join(LABELS3) + "\n")
    code, out, err = run_cli(capsys, "import", str(path), "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert "shapes v1, 3 labels, output probabilities, input 3x48x48" in out
    assert "the model rescales them itself" in out


# ------------------------------------------------------------------ what imgclf refuses, in one line

@pytest.fixture(scope="module")
def unsupported_models(tmp_path_factory) -> dict[str, dict[str, Path]]:
    @keras.saving.register_keras_serializable(package="mine")
    class Double(keras.layers.Layer):
        def call(self, x):
            return x * 2

    class Triple(keras.layers.Layer):
        def call(self, x):
            return x * 3

    root = tmp_path_factory.mktemp("unsupported")
    made = {}
    for key, layer in [("lambda", keras.layers.Lambda(lambda x: x / 255.0, name="scale_it")),
                       ("registered", Double(name="double_it")), ("plain", Triple(name="triple_it"))]:
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(layer(inputs)))
        made[key] = save_both(keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)), root / key)
    return made


@pytest.mark.parametrize("fmt", ["h5", "keras"])
@pytest.mark.parametrize("key, layer, words", [
    ("lambda", "scale_it", "Lambda layer holding Python code"),
    ("registered", "double_it", "custom layer (class mine>Double)"),
    ("plain", "triple_it", "custom layer (class Triple)"),
])
def test_unexportable_layer_is_named_in_one_line(tmp_path, capsys, unsupported_models, fmt, key, layer, words):
    path = unsupported_models[key][fmt]
    labels = tmp_path / "l.txt"
    labels.write_text("a\nb\nc\n")
    code, out, err = run_cli(capsys, "import", str(path), "--labels", str(labels), "--out", str(tmp_path / "p"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"layer '{layer}'" in err and words in err
    assert not (tmp_path / "p").exists()


def test_files_that_are_not_whole_keras_models(tmp_path, capsys):
    model = tiny_cnn()
    weights = tmp_path / "only.weights.h5"
    model.save_weights(weights)
    with pytest.raises(KerasImportError, match="holds weights only, no model architecture"):
        import_keras(weights, tmp_path / "p")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a model at all" * 10)
    with pytest.raises(KerasImportError, match="not a Keras model file"):
        import_keras(junk, tmp_path / "p")
    # A features-only model (include_top=False without pooling) is not a classifier.
    inputs = keras.Input((16, 16, 3))
    fmap = tmp_path / "fmap.keras"
    keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs)).save(fmap)
    with pytest.raises(KerasImportError, match="not \\(batch, classes\\); add pooling"):
        import_keras(fmap, tmp_path / "p")


def test_missing_keras_names_the_extra(tmp_path, monkeypatch):
    path = save_both(tiny_cnn(), tmp_path)["keras"]
    monkeypatch.setitem(sys.modules, "keras", None)  # what an install without the extra sees
    with pytest.raises(KerasImportError, match=r"pip install 'imgclf\[keras\]'"):
        import_keras(path, tmp_path / "p", labels=LABELS3)


# ------------------------------------------------------------------ a file as tf.keras 2 saved it

def _tf2_layer(cls: str, name: str, inbound: str | None, **config) -> dict:
    return {"class_name": cls, "config": {"name": name, "trainable": True, "dtype": "float32", **config},
            "name": name, "inbound_nodes": [[[inbound, 0, 0, {}]]] if inbound else []}


def write_tf2_h5(path: Path, kernel: np.ndarray, bias: np.ndarray, dense_k: np.ndarray, dense_b: np.ndarray) -> None:
    """A Functional model saved by tf.keras 2.15's ``model.save('x.h5')``, written byte layout by hand:
    Input(40x40x3) -> Rescaling(1/255) -> Conv2D(relu, valid) -> GlobalAveragePooling2D -> Dense(softmax)."""
    init = {"kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
            "bias_constraint": None, "use_bias": True}
    layers = [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 40, 40, 3], "dtype": "float32",
                                                "sparse": False, "ragged": False, "name": "input_1"},
         "name": "input_1", "inbound_nodes": []},
        _tf2_layer("Rescaling", "rescaling", "input_1", scale=1 / 255.0, offset=0.0),
        _tf2_layer("Conv2D", "conv2d", "rescaling", filters=kernel.shape[-1], kernel_size=[3, 3], strides=[1, 1],
                   padding="valid", data_format="channels_last", dilation_rate=[1, 1], groups=1,
                   activation="relu", **init),
        _tf2_layer("GlobalAveragePooling2D", "global_average_pooling2d", "conv2d",
                   data_format="channels_last", keepdims=False),
        _tf2_layer("Dense", "dense", "global_average_pooling2d", units=dense_k.shape[1], activation="softmax", **init),
    ]
    config = {"class_name": "Functional", "config": {"name": "model", "trainable": True, "layers": layers,
                                                     "input_layers": [["input_1", 0, 0]],
                                                     "output_layers": [["dense", 0, 0]]},
              "keras_version": "2.15.0", "backend": "tensorflow"}
    weights = {"conv2d": {"kernel:0": kernel, "bias:0": bias}, "dense": {"kernel:0": dense_k, "bias:0": dense_b}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        root = f.create_group("model_weights")
        root.attrs["layer_names"] = np.array([layer["name"].encode() for layer in layers])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.15.0"
        for layer in layers:
            group = root.create_group(layer["name"])
            arrays = weights.get(layer["name"], {})
            group.attrs["weight_names"] = np.array([f"{layer['name']}/{k}".encode() for k in arrays], dtype="S")
            for k, v in arrays.items():
                group.create_dataset(f"{layer['name']}/{k}", data=v)


def numpy_forward(pixels: np.ndarray, kernel, bias, dense_k, dense_b) -> np.ndarray:
    """The tf.keras model above, as Keras defines it: NHWC, kernel (kh, kw, in, out), valid padding."""
    x = pixels.astype(np.float64) / 255.0
    windows = sliding_window_view(x, (3, 3), axis=(1, 2))  # (N, H-2, W-2, C, 3, 3)
    conv = np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias
    pooled = np.maximum(conv, 0).mean(axis=(1, 2))
    logits = pooled @ dense_k + dense_b
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_tf_keras2_hdf5_file_matches_an_independent_forward_pass(tmp_path, photos):
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.5, (3, 3, 3, 6)).astype(np.float32)
    bias = rng.normal(0, 0.1, 6).astype(np.float32)
    dense_k = rng.normal(0, 1.0, (6, 4)).astype(np.float32)
    dense_b = rng.normal(0, 0.1, 4).astype(np.float32)
    path = tmp_path / "colab_model.h5"
    write_tf2_h5(path, kernel, bias, dense_k, dense_b)
    report = import_keras(path, tmp_path / "pkg", labels=["a", "b", "c", "d"])
    pkg = report.package
    assert pkg.name == "colab_model" and pkg.meta.provenance.extra["saved_by_keras"] == "2.15.0"
    assert pkg.meta.provenance.extra["saved_backend"] == "tensorflow"
    probs, pixels = package_outputs(pkg, photos)
    ref = numpy_forward(pixels, kernel, bias, dense_k, dense_b)
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    assert (probs.argmax(1) == ref.argmax(1)).all()


# ------------------------------------------------------------------ predict / serve import once, cached

def test_ensure_keras_package_imports_once_keyed_by_content(tmp_path, monkeypatch, capsys, sample_jpegs):
    from imgclf.importers import keras_cache as importer
    from imgclf.resolve import ensure_package

    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    folder = tmp_path / "models"
    path = save_both(tiny_cnn(), folder, stem="shapes")["h5"]
    (folder / "shapes.labels.txt").write_text("\n".join(LABELS3) + "\n")
    first = ensure_package(str(path))
    assert first.labels == LABELS3 and first.path.name == "shapes"
    assert first.path.parent.parent == tmp_path / "home" / "packages" / "keras"
    assert importer.cached_keras_package(path) == first.path

    def no_import(*a, **k):
        raise AssertionError("imported again")

    monkeypatch.setattr(importer, "import_keras", no_import)
    assert ensure_package(str(path)).path == first.path
    # predict on the file: JSON on stdout stays clean, labels from the file beside the model.
    code, out, err = run_cli(capsys, "predict", "--model", str(path), str(sample_jpegs["chelsea"]), "--json", "-k", "3")
    assert code == 0, err
    answer = json.loads(out)
    assert [p["label"] for p in answer[0]["predictions"]] != [] and {
        p["label"] for p in answer[0]["predictions"]} == set(LABELS3)
    monkeypatch.undo()
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    # Other labels (or other weights) are another package.
    (folder / "shapes.labels.txt").write_text("x\ny\nz\n")
    second = ensure_package(str(path))
    assert second.path != first.path and second.labels == ["x", "y", "z"]
    with pytest.raises(Exception, match="--weights applies to zoo models"):
        ensure_package(str(path), weights="w.pth")


def test_evaluate_takes_a_keras_file(tmp_path, monkeypatch, capsys, sample_jpegs):
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    for label, names in {"red": ["chelsea", "coffee"], "green": ["rocket", "china"], "blue": ["flower"]}.items():
        (data / label).mkdir(parents=True)
        for n in names:
            (data / label / f"{n}.jpg").write_bytes(sample_jpegs[n].read_bytes())
    path = save_both(tiny_cnn(), tmp_path / "m", stem="shapes")["keras"]
    (path.parent / "labels.txt").write_text("\n".join(LABELS3) + "\n")
    code, out, err = run_cli(capsys, "evaluate", str(path), "--data", str(data), "--split", "train",
                             "--out", str(tmp_path / "eval"))
    assert code == 0, err
    assert "shapes on data" in out and "accuracy" in out
    assert (tmp_path / "eval" / "metrics.json").is_file()
