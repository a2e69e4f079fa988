"""The description of how a Keras application's layers map onto a zoo model (see :mod:`imgclf.zoo.keras`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from imgclf.preprocess import PreprocessSpec

if TYPE_CHECKING:
    import torch

LayerKind = Literal["conv", "dense", "bn", "depthwise", "separable"]

KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


def tf_spec(input_size: int) -> PreprocessSpec:
    """Keras-applications "tf" preprocessing (Inception, Xception, MobileNet): ``load_img``'s
    nearest squash resize, then ``x / 127.5 - 1``."""
    return PreprocessSpec(input_size=input_size, crop_pct=1.0, resize_mode="squash", interpolation="nearest",
                          mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), scale=1.0)


@dataclass(frozen=True)
class KerasLayer:
    """One Keras layer with weights and the torch module it fills."""

    name: str | None  # None: auto-named by Keras (conv2d_7), matched per kind in creation order
    kind: LayerKind
    module: str  # torch module path; a separable conv fills ``<module>.conv1`` and ``<module>.pointwise``
    top: bool = False  # classifier layer: absent from include_top=False ('notop') files
    flatten_hwc: tuple[int, int, int] | None = None  # dense layer after Flatten of this NHWC map
    # Names older Keras releases gave the layer (keras-applications 1.0: 'probs', 'Logits').
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class KerasWeightsFile:
    """A weights file Keras publishes for a model."""

    filename: str
    url: str
    include_top: bool = True


def keras_weights_files(folder: str, name: str, notop: str = "_notop") -> tuple[KerasWeightsFile, KerasWeightsFile]:
    """The two files Keras publishes under ``keras-applications/<folder>/``: ``<name>.h5`` with the
    classifier and ``<name><notop>.h5`` without it."""
    return (KerasWeightsFile(f"{name}.h5", f"{KERAS_APPLICATIONS_URL}{folder}/{name}.h5"),
            KerasWeightsFile(f"{name}{notop}.h5", f"{KERAS_APPLICATIONS_URL}{folder}/{name}{notop}.h5", False))


@dataclass(frozen=True)
class KerasLayout:
    """How a Keras application maps onto a zoo model (stored in ``ZooEntry.extra["keras"]``)."""

    layers: tuple[KerasLayer, ...]  # every layer with weights, in the Keras model's creation order
    preprocess: PreprocessSpec  # the input the Keras weights expect
    build: Callable[[], torch.nn.Module] | None = None  # the Keras variant; None: the entry's builder
    files: tuple[KerasWeightsFile, ...] = ()
    # The input size a file name states (MobileNetV2 ..._1.0_160.h5), if any.
    size_from_filename: Callable[[str], int | None] | None = field(default=None, compare=False)

    def layer_names(self, include_top: bool = True) -> list[str]:
        return [k.name for k in self.layers if k.name and (include_top or not k.top)]

    def spec_for(self, path: str | Path | None) -> PreprocessSpec:
        size = self.size_from_filename(Path(path).name) if path and self.size_from_filename else None
        return self.preprocess.with_size(size) if size else self.preprocess
