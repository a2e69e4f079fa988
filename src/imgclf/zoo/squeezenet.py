"""SqueezeNet 1.1 (Iandola et al., 2016) in torchvision's state-dict layout.

``features.N`` holds the stem convolution (0) and the Fire modules (3, 4, 6, 7, 9-12) at their
torchvision indices; the classifier is a 1x1 convolution (``classifier.1``) followed by global
average pooling, so the network has no fully connected layer.
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.preprocess import PreprocessSpec
from imgclf.zoo.registry import WeightSource, ZooEntry, register


class Fire(nn.Module):
    """Squeeze with 1x1 convolutions, then expand with parallel 1x1 and 3x3 ones, concatenated."""

    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256),
        )
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # The classifier starts small so the initial class scores are near uniform.
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_1(num_classes: int = 1000) -> SqueezeNet11:
    return SqueezeNet11(num_classes=num_classes)


register(ZooEntry(
    name="squeezenet1_1",
    family="squeezenet",
    builder=squeezenet1_1,
    preprocess=PreprocessSpec(input_size=224, crop_pct=224 / 256, interpolation="bilinear"),
    num_params=1_235_496,
    weights=WeightSource(
        filename="squeezenet1_1-b8a52dc0.pth",  # hash prefix in the name, checked as torch.hub does
        url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
        license="BSD-3-Clause (torchvision)",
    ),
    description="SqueezeNet 1.1, 224px; torchvision weights (ImageNet top-1 58.2%)",
    extra={"classifier": "classifier.1", "imagenet_top1_published": 58.178},
))
