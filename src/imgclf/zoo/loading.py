"""Build a zoo model and load its weights strictly (a mismatch is an error, never a silent skip)."""

from __future__ import annotations

from pathlib import Path

import torch

from imgclf.preprocess import PreprocessSpec
from imgclf.zoo import weights as W
from imgclf.zoo.registry import ZooEntry

KERAS_WEIGHTS_SUFFIXES = (".h5", ".hdf5")  # Keras-applications weights (whole models: imgclf.importers)


def preprocess_for(entry: ZooEntry, weights: str | Path | None = None) -> PreprocessSpec:
    """The preprocessing ``entry`` needs with these weights: a Keras ``.h5`` file brings Keras'
    own (caffe-mode BGR for VGG and ResNet50, [-1, 1] for Inception, Xception and MobileNetV2),
    anything else the entry's spec. Everything that builds a zoo model with ``--weights``
    (predict, export, serve) takes its spec from here."""
    if weights is not None and is_keras_weights(weights):
        from imgclf.zoo.keras import keras_preprocess

        return keras_preprocess(entry, weights)
    return entry.preprocess


def is_keras_weights(path: str | Path) -> bool:
    return Path(path).suffix.lower() in KERAS_WEIGHTS_SUFFIXES


def load_weights_file(entry: ZooEntry, path: str | Path, *, include_top: bool = True) -> dict:
    path = Path(path)
    if is_keras_weights(path):
        from imgclf.zoo.keras import read_keras_h5

        return read_keras_h5(entry, path, include_top=include_top)
    state = W.read_state_dict(path)
    if entry.adapt_state_dict is not None:
        state = entry.adapt_state_dict(state)
    return state


def _architecture(entry: ZooEntry, path: Path | None) -> torch.nn.Module:
    """The entry's model, in its Keras variant for Keras weights (conv biases, TF padding ...)."""
    if path is not None and is_keras_weights(path):
        from imgclf.zoo.keras import keras_layout

        build = keras_layout(entry).build
        if build is not None:
            return build()
    return entry.builder()


def remove_top(model: torch.nn.Module, entry: ZooEntry) -> torch.nn.Module:
    """Drop the classifier so the model returns its pooled features (Keras ``include_top=False,
    pooling='avg'``); the family's model class says how (``remove_top()``)."""
    drop = getattr(model, "remove_top", None)
    if drop is None:
        raise W.WeightsError(f"{entry.name} cannot be built without its classifier (include_top=False)")
    drop()
    return model


def build_model(
    entry: ZooEntry, *, weights: str | None = None, pretrained: bool = True, allow_download: bool = True,
    include_top: bool = True,
) -> torch.nn.Module:
    """``include_top=False``: no classifier, the model returns pooled features; this is the one
    way to load an include_top=False ('notop') Keras file."""
    path = None
    if weights is not None or pretrained:
        path = Path(weights) if weights is not None else W.resolve(entry, allow_download=allow_download)
    model = _architecture(entry, path)
    if not include_top:
        full = set(model.state_dict())
        remove_top(model, entry)
        top_keys = full - set(model.state_dict())
    if path is not None:
        state = load_weights_file(entry, path, include_top=include_top)
        if not include_top:
            state = {k: v for k, v in state.items() if k not in top_keys}
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            first = str(exc).strip().splitlines()[-1].strip()
            raise W.WeightsError(f"{path.name} does not fit {entry.name}: {first}") from None
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise W.WeightsError(
                f"{path.name} does not fit {entry.name}: {len(missing)} missing keys "
                f"({', '.join(missing[:3])}...), {len(result.unexpected_keys)} unexpected "
                f"({', '.join(result.unexpected_keys[:3])}...)"
            )
    return model.eval()


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
