"""What a loaded Keras model expects and returns: the Keras application it is built on, the
preprocessing that implies, and whether its output is probabilities or logits.

The preprocessing of a Keras-applications base is fixed by its ``preprocess_input``:

* ``caffe`` (VGG16/19, ResNet50/101/152): RGB -> BGR, 0..255, ImageNet BGR means subtracted;
* ``tf`` (InceptionV3, Xception, MobileNet, MobileNetV2, InceptionResNetV2, ResNetV2): x / 127.5 - 1;
* ``torch`` (DenseNet): x / 255, ImageNet mean and std;
* ``raw`` (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3): the model rescales inside itself
  (``Rescaling``/``Normalization`` layers), so it takes 0..255 pixels as they are.

A model whose first layers (before any base) rescale its input also takes raw pixels, whatever its
base: the user put the preprocessing into the model. Geometry follows ``keras.utils.load_img``,
which every Keras tutorial uses: the whole image squashed to the input size, nearest neighbour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from imgclf.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec, caffe_spec

Mode = Literal["caffe", "tf", "torch", "raw"]
OutputKind = Literal["probabilities", "logits"]


@dataclass(frozen=True)
class KerasBase:
    """One ``keras.applications`` family: how to recognise it and what input it takes."""

    name: str
    mode: Mode
    size: int  # the ImageNet input side, used when the model leaves its input size open
    model_name: str  # regex for the name keras.applications gives the model (nested base)
    markers: frozenset[str]  # layer names that all occur in this family
    absent: frozenset[str] = frozenset()  # layer names that tell a look-alike family apart


def _base(name: str, mode: Mode, size: int, model_name: str, markers: str = "", absent: str = "") -> KerasBase:
    return KerasBase(name, mode, size, model_name, frozenset(markers.split()), frozenset(absent.split()))


# Most specific first: the first family whose markers all occur (and none of its absent names) wins.
BASES: tuple[KerasBase, ...] = (
    _base("VGG19", "caffe", 224, r"vgg19", "block1_conv1 block5_conv4", "block1_conv1_bn"),
    _base("VGG16", "caffe", 224, r"vgg16", "block1_conv1 block5_conv3", "block1_conv1_bn block5_conv4"),
    _base("Xception", "tf", 299, r"xception", "block1_conv1_bn block14_sepconv2"),
    _base("ResNetV2", "tf", 224, r"resnet\d+v2", "conv1_conv post_bn conv2_block1_preact_bn"),
    _base("ResNet152", "caffe", 224, r"resnet152", "conv1_conv conv2_block1_0_conv conv3_block8_out"),
    _base("ResNet101", "caffe", 224, r"resnet101", "conv1_conv conv2_block1_0_conv conv4_block23_out"),
    _base("ResNet50", "caffe", 224, r"resnet50", "conv1_conv conv2_block1_0_conv conv2_block1_add"),
    _base("DenseNet", "torch", 224, r"densenet\d+", "conv2_block1_concat pool2_conv"),
    _base("InceptionResNetV2", "tf", 299, r"inception_resnet_v2", "conv_7b mixed_7a"),
    _base("InceptionV3", "tf", 299, r"inception_v3", "mixed10 mixed9_1"),
    _base("MobileNetV2", "tf", 224, r"mobilenetv2_.*", "Conv_1 block_16_project"),
    _base("MobileNet", "tf", 224, r"mobilenet_.*", "conv_dw_13 conv_pw_13"),
    _base("MobileNetV3", "raw", 224, r"MobileNetV3(Small|Large)"),
    _base("EfficientNetV2", "raw", 224, r"efficientnetv2-(b[0-3]|s|m|l)"),
    _base("EfficientNet", "raw", 224, r"efficientnetb[0-7]", "stem_conv block1a_project_conv top_conv"),
    _base("ConvNeXt", "raw", 224, r"convnext_(tiny|small|base|large|xlarge)"),
)

# ImageNet input sides of the variants that differ from their family's default.
_VARIANT_SIZES = {
    "efficientnetb1": 240, "efficientnetb2": 260, "efficientnetb3": 300, "efficientnetb4": 380,
    "efficientnetb5": 456, "efficientnetb6": 528, "efficientnetb7": 600,
    "efficientnetv2-b1": 240, "efficientnetv2-b2": 260, "efficientnetv2-b3": 300,
    "efficientnetv2-s": 384, "efficientnetv2-m": 480, "efficientnetv2-l": 480,
}

# Layers that leave pixel values alone at inference (augmentation is off, resizing keeps the scale).
_PASSTHROUGH = frozenset({
    "InputLayer", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
    "RandomBrightness", "RandomHeight", "RandomWidth", "GaussianNoise", "GaussianDropout", "Dropout",
    "Resizing", "CenterCrop", "Identity",
})
_RESCALING = frozenset({"Rescaling", "Normalization"})


@dataclass(frozen=True)
class DetectedBase:
    base: KerasBase
    variant: str  # the application's model name when it is nested under its own name, else the family

    @property
    def default_size(self) -> int:
        return _VARIANT_SIZES.get(self.variant, self.base.size)


def iter_layers(model: Any) -> Iterator[Any]:
    """Every layer of a loaded Keras model, nested models' layers included."""
    for layer in getattr(model, "layers", ()):
        yield layer
        if hasattr(layer, "layers"):
            yield from iter_layers(layer)


def detect_base(model: Any) -> DetectedBase | None:
    """The ``keras.applications`` model this one is built on, by nested model name or layer names."""
    models = [model] + [layer for layer in iter_layers(model) if hasattr(layer, "layers")]
    for m in models:
        inside = {layer.name for layer in iter_layers(m)}
        for base in BASES:
            # The name alone could be the user's; the family's layers must be there too.
            if re.fullmatch(base.model_name, m.name) and base.markers <= inside:
                return DetectedBase(base, m.name)
    names = {layer.name for layer in iter_layers(model)}
    for base in BASES:
        if base.markers and base.markers <= names and not base.absent & names:
            return DetectedBase(base, base.name)
    return None


def _leading_rescaling(model: Any) -> str | bool:
    """The name of a Rescaling/Normalization layer at the model's input side (looking through
    augmentation and nested models that start with it); ``True`` if every layer passed through."""
    for layer in getattr(model, "layers", ()):
        kind = type(layer).__name__
        if kind in _RESCALING:
            return layer.name
        if kind in _PASSTHROUGH:
            continue
        if hasattr(layer, "layers"):
            found = _leading_rescaling(layer)
            if found is True:
                continue  # e.g. a data_augmentation Sequential of Random* layers
            return found
        return False
    return True


def input_rescaling_layer(model: Any) -> str | None:
    found = _leading_rescaling(model)
    return found if isinstance(found, str) else None


def spec_for_mode(mode: Mode, size: int) -> PreprocessSpec:
    squash = {"input_size": size, "crop_pct": 1.0, "resize_mode": "squash", "interpolation": "nearest"}
    if mode == "caffe":
        return caffe_spec(size)
    if mode == "tf":
        return PreprocessSpec(**squash, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0), scale=1 / 127.5)
    if mode == "torch":
        return PreprocessSpec(**squash, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=1 / 255)
    return PreprocessSpec(**squash, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0)


def output_layer(model: Any) -> Any:
    """The layer that produces the model's (single) output, looking inside nested models."""
    outputs = getattr(model, "outputs", None) or []
    history = getattr(outputs[0], "_keras_history", None) if outputs else None
    layer = getattr(history, "operation", None) if history is not None else None
    if layer is None and getattr(model, "layers", None):
        layer = model.layers[-1]
    if layer is not None and layer is not model and hasattr(layer, "layers"):
        return output_layer(layer)
    return layer


def final_activation(model: Any) -> str | None:
    """'softmax', 'sigmoid', 'linear', ... of the output layer; None when it cannot be told."""
    layer = output_layer(model)
    if layer is None:
        return None
    if type(layer).__name__ == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", None)
