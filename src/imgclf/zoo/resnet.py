"""ResNet-50 (He et al., 2015) in torchvision's state-dict layout.

Bottleneck blocks put the stride on the 3x3 convolution (the "v1.5" arrangement torchvision uses);
``layerN.M.downsample.{0,1}`` is the projection shortcut, ``fc`` the classifier. torchvision's
original (V1) ImageNet weights ``resnet50-0676ba61.pth`` load unchanged.

``keras=True`` builds Keras-applications' ResNet50 in the same module tree: every convolution has
a bias, batch norm uses eps 1.001e-5 and a bottleneck strides its first 1x1 convolution ("v1").
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from imgclf.preprocess import PreprocessSpec, caffe_spec
from imgclf.zoo.keras import (
    KerasLayer,
    KerasLayout,
    keras_weights_files,
)
from imgclf.zoo.registry import WeightSource, ZooEntry, register

KERAS_BN_EPS = 1.001e-5


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, *, keras: bool = False) -> None:
        super().__init__()
        out_ch = width * self.expansion
        bias, eps = keras, KERAS_BN_EPS if keras else 1e-5
        s1, s2 = (stride, 1) if keras else (1, stride)  # Keras strides the 1x1, torchvision the 3x3
        self.conv1 = nn.Conv2d(in_ch, width, 1, s1, bias=bias)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = nn.Conv2d(width, width, 3, s2, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=bias),
                                            nn.BatchNorm2d(out_ch, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, int, int, int], num_classes: int = 1000, *, keras: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=keras)
        self.bn1 = nn.BatchNorm2d(64, eps=KERAS_BN_EPS if keras else 1e-5)
        self.relu = nn.ReLU(inplace=True)
        # Keras zero-pads before this pool; after a ReLU that equals torch's -inf padding.
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        stages = []
        for i, (blocks, width) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(in_ch, width, stride if b == 0 else 1, keras=keras))
                in_ch = width * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))

    def remove_top(self) -> None:
        """No classifier: forward returns the pooled features (Keras ``include_top=False, pooling='avg'``)."""
        self.fc = nn.Identity()


def resnet50(num_classes: int = 1000, *, keras: bool = False) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes=num_classes, keras=keras)


def keras_layout(layers: tuple[int, ...] = (3, 4, 6, 3), name: str = "resnet50") -> KerasLayout:
    """Keras-applications ResNet names: ``conv1_conv``/``conv1_bn``, ``conv<stage>_block<b>_<i>_conv``
    and ``_bn`` (``_0_`` is the projection shortcut), ``predictions``."""
    out = [KerasLayer("conv1_conv", "conv", "conv1"), KerasLayer("conv1_bn", "bn", "bn1")]
    for stage, blocks in enumerate(layers):
        for b in range(blocks):
            keras, torch_ = f"conv{stage + 2}_block{b + 1}", f"layer{stage + 1}.{b}"
            if b == 0:
                out += [KerasLayer(f"{keras}_0_conv", "conv", f"{torch_}.downsample.0"),
                        KerasLayer(f"{keras}_0_bn", "bn", f"{torch_}.downsample.1")]
            for i in (1, 2, 3):
                out += [KerasLayer(f"{keras}_{i}_conv", "conv", f"{torch_}.conv{i}"),
                        KerasLayer(f"{keras}_{i}_bn", "bn", f"{torch_}.bn{i}")]
    # keras-applications 1.0 (which wrote the published file) named the classifier 'probs'.
    out.append(KerasLayer("predictions", "dense", "fc", top=True, aliases=("probs",)))
    stem = f"{name}_weights_tf_dim_ordering_tf_kernels"
    files = keras_weights_files("resnet", stem)
    return KerasLayout(layers=tuple(out), preprocess=caffe_spec(224), files=files,
                       build=partial(ResNet, layers, keras=True))


register(ZooEntry(
    name="resnet50",
    family="resnet",
    builder=resnet50,
    preprocess=PreprocessSpec(input_size=224, crop_pct=224 / 256, interpolation="bilinear"),
    num_params=25_557_032,
    weights=WeightSource(
        filename="resnet50-0676ba61.pth",  # torchvision's IMAGENET1K_V1 weights; hash prefix in the name
        url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        license="BSD-3-Clause (torchvision)",
    ),
    description="ResNet-50, 224px; torchvision V1 weights (ImageNet top-1 76.1%); also loads Keras .h5 weights",
    extra={"classifier": "fc", "imagenet_top1_published": 76.13, "keras": keras_layout()},
))
