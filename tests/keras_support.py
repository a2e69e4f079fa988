"""Keras (torch backend) models with random but realistic weights, saved the way Keras-applications
weight files are, plus Keras' own predictions for them: the reference for the zoo's Keras loaders.

Random weights alone make a deep network degenerate (activations vanish or explode, batch norm
moving stats of 0 and 1 describe nothing). So every batch norm layer gets a random scale and shift
and moving statistics taken from the activations it actually sees on a calibration batch (one
training-mode pass with momentum 0), lightly perturbed; biases are random; the classifier is scaled
so its logits spread over a few units and the top-5 is decided by clear margins.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402  (after KERAS_BACKEND)
import numpy as np  # noqa: E402

if keras.backend.backend() != "torch":  # pragma: no cover - keras imported elsewhere first
    raise RuntimeError("these tests need Keras on the torch backend (KERAS_BACKEND=torch)")

# name -> (constructor, preprocess_input, input size)
APPLICATIONS = {
    "resnet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input, 224),
    "inception_v3": (keras.applications.InceptionV3, keras.applications.inception_v3.preprocess_input, 299),
    "xception": (keras.applications.Xception, keras.applications.xception.preprocess_input, 299),
    "mobilenet_v2": (keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input, 224),
}


def keras_input(paths: list[Path], name: str) -> np.ndarray:
    """What Keras' documentation does: ``load_img(target_size)`` then ``preprocess_input``."""
    _, preprocess_input, size = APPLICATIONS[name]
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size))) for p in paths])
    return np.asarray(preprocess_input(x))


def without_top(model: keras.Model, name: str) -> keras.Model:
    """The same application built with ``include_top=False, pooling='avg'``, holding ``model``'s weights."""
    notop = APPLICATIONS[name][0](weights=None, include_top=False, pooling="avg")
    mine = [la for la in notop.layers if la.weights]
    theirs = [la for la in model.layers if la.weights][: len(mine)]
    for a, b in zip(mine, theirs, strict=True):
        a.set_weights(b.get_weights())
    return notop


def build(name: str, *, include_top: bool, calibration: np.ndarray, seed: int = 0) -> keras.Model:
    """``keras.applications.<name>(weights=None)`` with realistic random weights (see module doc)."""
    ctor = APPLICATIONS[name][0]
    keras.utils.set_random_seed(seed)
    kwargs = {"pooling": "avg"} if not include_top else {}
    model = ctor(weights=None, include_top=include_top, **kwargs)
    rng = np.random.default_rng(seed)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.2, layer.beta.shape).astype("float32"))
        elif getattr(layer, "use_bias", False) and not isinstance(layer, keras.layers.Dense):
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape).astype("float32"))
    saved = [b.momentum for b in bns]
    for b in bns:
        b.momentum = 0.0
    import torch

    with torch.no_grad():
        model(calibration, training=True)  # moving stats := the batch's statistics, layer by layer
    for b, m in zip(bns, saved, strict=True):
        b.momentum = m
        std = np.sqrt(np.asarray(b.moving_variance.numpy()))
        b.moving_mean.assign(np.asarray(b.moving_mean.numpy()) + rng.normal(0, 0.1, std.shape) * std)
        b.moving_variance.assign(np.asarray(b.moving_variance.numpy()) * rng.uniform(0.8, 1.25, std.shape))
    if include_top:
        dense = model.get_layer("predictions")
        kernel = np.asarray(dense.kernel.numpy())
        features = keras.ops.convert_to_numpy(keras.Model(model.input, dense.input)(calibration, training=False))
        logits = np.asarray(features) @ kernel
        dense.kernel.assign(kernel * (3.0 / max(float(logits.std()), 1e-6)))
        dense.bias.assign(rng.normal(0.0, 0.5, dense.bias.shape).astype("float32"))
    return model


def save_weights_h5(model: keras.Model, path: Path) -> Path:
    """The Keras-applications file layout (``save_weights`` to HDF5, as Keras 2 wrote them)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, verbose=0), dtype=np.float64)
