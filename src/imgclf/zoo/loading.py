"""Build a zoo model and load its weights strictly (a mismatch is an error, never a silent skip)."""

from __future__ import annotations

from pathlib import Path

import torch

from imgclf.preprocess import PreprocessSpec
from imgclf.zoo import weights as W
from imgclf.zoo.registry import ZooEntry

KERAS_SUFFIXES = (".h5", ".hdf5")


def preprocess_for(entry: ZooEntry, weights: str | Path | None = None) -> PreprocessSpec:
    """The preprocessing ``entry`` needs with these weights: a Keras ``.h5`` file brings Keras'
    own (caffe-mode BGR for VGG), anything else the entry's spec. Everything that builds a zoo
    model with ``--weights`` (predict, export, serve) takes its spec from here."""
    if weights is not None and Path(weights).suffix.lower() in KERAS_SUFFIXES:
        from imgclf.zoo.keras import keras_preprocess

        return keras_preprocess(entry)
    return entry.preprocess


def load_weights_file(entry: ZooEntry, path: str | Path) -> dict:
    path = Path(path)
    if path.suffix.lower() in KERAS_SUFFIXES:
        from imgclf.zoo.keras import read_keras_h5

        return read_keras_h5(entry, path)
    state = W.read_state_dict(path)
    if entry.adapt_state_dict is not None:
        state = entry.adapt_state_dict(state)
    return state


def build_model(
    entry: ZooEntry, *, weights: str | None = None, pretrained: bool = True, allow_download: bool = True
) -> torch.nn.Module:
    model = entry.builder()
    if weights is not None or pretrained:
        path = Path(weights) if weights is not None else W.resolve(entry, allow_download=allow_download)
        state = load_weights_file(entry, path)
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
