"""Load Keras-applications ``.h5`` weights (VGG16/19, ResNet50, InceptionV3, Xception, MobileNetV2)
into this project's torch models.

What differs between a Keras model and its torch twin, and where each difference is handled:

* array layouts (:mod:`imgclf.zoo.keras_convert`): conv kernels ``(kh, kw, in, out)`` -> ``(out, in, kh,
  kw)``; depthwise kernels ``(kh, kw, in, mult)`` -> ``(in * mult, 1, kh, kw)``; dense kernels
  ``(in, out)`` -> ``(out, in)``; a dense layer after ``Flatten`` gets its rows reordered from NHWC
  ``(h, w, c)`` to NCHW ``(c, h, w)``; a batch norm without a scale (``scale=False``) gets ones;
* architecture (the family module's Keras variant, :attr:`KerasLayout.build`): conv biases, batch
  norm epsilons, TF's asymmetric 'same' padding, pools that exclude the padding;
* input (:attr:`KerasLayout.preprocess`): the weights expect Keras' ``preprocess_input`` ("caffe"
  BGR mean subtraction or "tf" [-1, 1]) after ``load_img``'s squash resize. The spec travels with
  the weights into the exported package's ``model.json``, as torchvision's ``Weights`` carry their
  transforms.

Layers are matched by name. Keras gives some layers no name of their own (``conv2d_7``,
``batch_normalization_7``: every InceptionV3 layer, Xception's shortcut convolutions); those are
matched per kind in creation order, which the counter in the name records whatever the order of
``layer_names`` (Keras lists layers by graph depth, not as created).

Both HDF5 layouts Keras 1/2 write are read: ``model.save_weights()`` (the applications files,
layer groups at the root) and ``model.save()`` (the same under ``model_weights``). A whole model
that does not fit (a fine-tuned model with its own head) is pointed at ``imgclf import``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.preprocess import PreprocessSpec
from imgclf.zoo.keras_convert import convert_layer, keras_to_torch, match_layers
from imgclf.zoo.keras_h5 import KerasH5, read_keras_layers, read_keras_weights
from imgclf.zoo.keras_layout import (
    KERAS_APPLICATIONS_URL,
    KerasLayer,
    KerasLayout,
    KerasWeightsFile,
    keras_weights_files,
    tf_spec,
)
from imgclf.zoo.weights import WeightsError

if TYPE_CHECKING:
    import torch

    from imgclf.zoo.registry import ZooEntry

__all__ = [
    "KERAS_APPLICATIONS_URL", "KerasWeightsFile", "KerasH5", "KerasLayer", "KerasLayout", "convert_layer", "keras_able",
    "keras_layout", "keras_preprocess", "keras_to_torch", "keras_weights_files", "match_layers", "read_keras_weights", "read_keras_h5",
    "read_keras_layers", "tf_spec",
]


def keras_layout(entry: ZooEntry) -> KerasLayout:
    layout = entry.extra.get("keras")
    if not isinstance(layout, KerasLayout):
        raise WeightsError(f"{entry.name} cannot load Keras .h5 weights; models that can: {', '.join(keras_able())}")
    return layout


def keras_able() -> list[str]:
    from imgclf.zoo.registry import entries

    return [e.name for e in entries() if isinstance(e.extra.get("keras"), KerasLayout)]


def keras_preprocess(entry: ZooEntry, path: str | Path | None = None) -> PreprocessSpec:
    """The preprocessing a model running Keras weights needs (e.g. caffe mode for VGG/ResNet50)."""
    return keras_layout(entry).spec_for(path)


def read_keras_h5(entry: ZooEntry, path: str | Path, *, include_top: bool = True) -> dict[str, torch.Tensor]:
    """A Keras ``.h5`` weights file -> a state dict for the Keras variant of ``entry``'s model.

    Pair the result with :func:`keras_preprocess`: the weights expect Keras' input, not the
    entry's default preprocessing. ``include_top=False`` leaves out the classifier layers (a
    'notop' file has none).
    """
    import torch

    layout = keras_layout(entry)
    state = keras_to_torch(read_keras_weights(path), layout, entry.name, include_top=include_top)
    return {k: torch.from_numpy(v) for k, v in state.items()}
