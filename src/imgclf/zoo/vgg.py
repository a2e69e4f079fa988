"""VGG (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition").

The module tree mirrors torchvision's so its official weights load with strict key matching:
``features.<i>`` is one flat ``Sequential`` of conv (+ BN) + ReLU and max-pool layers,
``avgpool`` adapts to 7x7, ``classifier.{0,3,6}`` are the three linear layers.

The plain VGG16/VGG19 entries also accept the Keras-applications ``.h5`` weights (see
:mod:`imgclf.zoo.keras`); ``vgg16_keras``/``vgg19_keras`` use those weights by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from imgclf.preprocess import PreprocessSpec, caffe_spec
from imgclf.zoo.keras import (
    KerasLayer,
    KerasLayout,
    KerasWeightsFile,
    keras_weights_files,
)
from imgclf.zoo.registry import WeightSource, ZooEntry, register

Layer = int | str  # an int is a 3x3 conv with that many output channels, "M" a 2x2 max-pool

CONFIGS: dict[int, tuple[Layer, ...]] = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}

POOLED = 7  # spatial side the classifier sees (224 / 2**5)


def make_features(cfg: Sequence[Layer], *, batch_norm: bool = False, in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        in_channels = int(v)
    return nn.Sequential(*layers)


def _last_width(cfg: Sequence[Layer]) -> int:
    return next(int(v) for v in reversed(cfg) if v != "M")


class VGG(nn.Module):
    """A VGG network from a layer config; ``hidden`` is the width of the two hidden FC layers."""

    def __init__(self, cfg: Sequence[Layer], *, batch_norm: bool = False, num_classes: int = 1000,
                 hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = make_features(cfg, batch_norm=batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((POOLED, POOLED))
        self.classifier = nn.Sequential(
            nn.Linear(_last_width(cfg) * POOLED * POOLED, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # The original paper's scheme as torchvision applies it; only matters without pretrained weights.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def remove_top(self) -> None:
        """No fully connected layers: forward returns the globally averaged last conv map (Keras
        ``include_top=False, pooling='avg'``)."""
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Identity()


def keras_files(depth: int) -> tuple[KerasWeightsFile, ...]:
    return keras_weights_files(f"vgg{depth}", f"vgg{depth}_weights_tf_dim_ordering_tf_kernels")


def keras_layout(cfg: Sequence[Layer], depth: int | None = None) -> KerasLayout:
    """Where each Keras-applications VGG layer (``block<b>_conv<c>``, ``fc1``, ``fc2``,
    ``predictions``) lands in this module tree. The architecture is the same (no batch norm:
    Keras has no VGG-BN), only the first dense layer's rows follow Keras' NHWC flatten."""
    layers: list[KerasLayer] = []
    index, block, conv = 0, 1, 0
    for v in cfg:
        if v == "M":
            index, block, conv = index + 1, block + 1, 0
            continue
        conv += 1
        layers.append(KerasLayer(f"block{block}_conv{conv}", "conv", f"features.{index}"))
        index += 2  # conv, relu
    layers += [
        KerasLayer("fc1", "dense", "classifier.0", top=True, flatten_hwc=(POOLED, POOLED, _last_width(cfg))),
        KerasLayer("fc2", "dense", "classifier.3", top=True),
        KerasLayer("predictions", "dense", "classifier.6", top=True),
    ]
    return KerasLayout(layers=tuple(layers), preprocess=caffe_spec(224), files=keras_files(depth) if depth else ())


# torchvision's evaluation transform for VGG: shorter side 256, centre crop 224, bilinear.
TORCHVISION_SPEC = PreprocessSpec(input_size=224, crop_pct=0.875, interpolation="bilinear")

_TV = "https://download.pytorch.org/models/"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"

# name, depth, batch norm, torchvision weights file, parameters, torchvision's ImageNet top-1
_TORCHVISION = (
    ("vgg16", 16, False, "vgg16-397923af.pth", 138_357_544, 71.592),
    ("vgg19", 19, False, "vgg19-dcbb9e9d.pth", 143_667_240, 72.376),
    ("vgg16_bn", 16, True, "vgg16_bn-6c64b313.pth", 138_365_992, 73.360),
    ("vgg19_bn", 19, True, "vgg19_bn-c79401a0.pth", 143_678_248, 74.218),
)


def _register() -> None:
    for name, depth, bn, filename, params, top1 in _TORCHVISION:
        register(ZooEntry(
            name=name,
            family="vgg",
            builder=partial(VGG, CONFIGS[depth], batch_norm=bn),
            preprocess=TORCHVISION_SPEC,
            num_params=params,
            weights=WeightSource(filename=filename, url=_TV + filename),
            description=f"VGG{depth}{'-BN' if bn else ''}, torchvision weights (ImageNet top-1 {top1:.1f}%)"
                        + ("" if bn else "; also loads Keras .h5 weights"),
            extra={} if bn else {"keras": keras_layout(CONFIGS[depth], depth)},
        ))
    for depth in (16, 19):
        filename = f"vgg{depth}_weights_tf_dim_ordering_tf_kernels.h5"
        register(ZooEntry(
            name=f"vgg{depth}_keras",
            family="vgg",
            builder=partial(VGG, CONFIGS[depth]),
            preprocess=caffe_spec(224),
            num_params=138_357_544 if depth == 16 else 143_667_240,
            # Keras publishes only an md5 for these files, so the download is not hash-checked.
            weights=WeightSource(filename=filename, url=f"{_KERAS}vgg{depth}/{filename}"),
            description=f"VGG{depth}, Keras-applications weights (caffe preprocessing: BGR, mean subtraction)",
            extra={"keras": keras_layout(CONFIGS[depth], depth)},
        ))


_register()
