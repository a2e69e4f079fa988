"""Inception v3 (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision").

Module names follow torchvision (``Conv2d_1a_3x3``, ``Mixed_5b.branch1x1.conv`` ... ``AuxLogits``,
``fc``) so its official weights, ported from TensorFlow, load with strict key matching. Every
convolution is conv (no bias) + BatchNorm(eps=1e-3) + ReLU.

Those weights were trained on inputs scaled to [-1, 1]; torchvision keeps ImageNet mean/std
preprocessing and rescales inside the model (``transform_input=True``), and so does this model.
In training mode with ``aux_logits`` the forward pass returns ``(logits, aux_logits)``; in eval
mode it returns logits only (what export and inference use).

``keras=True`` builds Keras-applications' InceptionV3 in the same module tree: no auxiliary head,
no input rescaling (Keras feeds [-1, 1] directly), and the 3x3 'same' average pools leave the
padding out of the mean. Keras' batch norm has no scale (``scale=False``): its weights load as 1.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from imgclf.zoo.keras import (
    KerasLayer,
    KerasLayout,
    keras_weights_files,
    tf_spec,
)
from imgclf.zoo.registry import WeightSource, ZooEntry, register

Size = int | tuple[int, int]


class InceptionOutputs(NamedTuple):
    logits: torch.Tensor
    aux_logits: torch.Tensor


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: Size, stride: int = 1, padding: Size = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor, include_pad: bool = True) -> torch.Tensor:
    # 3x3 stride-1 average pool that keeps the size; padded zeros count in the mean in torchvision,
    # not in Keras ('same' pooling averages the real pixels only).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=include_pad)


class InceptionA(nn.Module):
    """35x35 grid: 1x1, 5x5, double 3x3 and pooled branches (Mixed_5b..5d)."""

    def __init__(self, cin: int, pool_features: int, *, pool_include_pad: bool = True) -> None:
        super().__init__()
        self.pool_include_pad = pool_include_pad
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x, self.pool_include_pad)),
        ], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17x17 grid with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, cin: int, channels_7x7: int, *, pool_include_pad: bool = True) -> None:
        super().__init__()
        self.pool_include_pad = pool_include_pad
        c = channels_7x7
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c, 1)
        self.branch7x7_2 = ConvBN(c, c, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(cin, c, 1)
        self.branch7x7dbl_2 = ConvBN(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c, c, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = conv(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg3(x, self.pool_include_pad))], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            b7,
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionE(nn.Module):
    """8x8 grid with expanded (split 1x3 / 3x1) filter banks (Mixed_7b, 7c)."""

    def __init__(self, cin: int, *, pool_include_pad: bool = True) -> None:
        super().__init__()
        self.pool_include_pad = pool_include_pad
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(s), self.branch3x3_2b(s),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(_avg3(x, self.pool_include_pad)),
        ], dim=1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid; only used as an extra loss while training."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = ConvBN(cin, 128, 1)
        self.conv1 = ConvBN(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)  # 17x17 -> 5x5
        x = self.conv1(self.conv0(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Inception3(nn.Module):
    def __init__(self, num_classes: int = 1000, *, aux_logits: bool = True, transform_input: bool = True,
                 dropout: float = 0.5, keras: bool = False) -> None:
        super().__init__()
        if keras:
            aux_logits = transform_input = False
        pad = {"pool_include_pad": not keras}
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32, **pad)
        self.Mixed_5c = InceptionA(256, pool_features=64, **pad)
        self.Mixed_5d = InceptionA(288, pool_features=64, **pad)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, **pad)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, **pad)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, **pad)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, **pad)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, **pad)
        self.Mixed_7c = InceptionE(2048, **pad)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)
        # ImageNet-normalised input -> the [-1, 1] scaling the TensorFlow weights were trained on:
        # (x * std + mean - 0.5) / 0.5 per channel. Not persistent: they are not part of the weights.
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("input_scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-2.0, b=2.0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.AuxLogits is not None:
            nn.init.trunc_normal_(self.AuxLogits.conv1.conv.weight, std=0.01, a=-2.0, b=2.0)
            nn.init.trunc_normal_(self.AuxLogits.fc.weight, std=0.001, a=-2.0, b=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor | InceptionOutputs:
        if self.transform_input:
            x = x * self.input_scale + self.input_shift
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        aux = self.AuxLogits(x) if self.training and self.AuxLogits is not None else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        logits = self.fc(torch.flatten(self.dropout(self.avgpool(x)), 1))
        return InceptionOutputs(logits, aux) if aux is not None else logits

    def remove_top(self) -> None:
        """No classifiers: forward returns the pooled features (Keras ``include_top=False, pooling='avg'``)."""
        self.fc = nn.Identity()
        self.AuxLogits = None


# Every ConvBN of a block, in the order Keras' inception_v3.py creates them (= definition order here).
_BRANCHES = {
    "A": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
          "branch_pool"),
    "B": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "C": ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
          "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
    "D": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
    "E": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
_BLOCKS = (("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
           ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"), ("Mixed_7b", "E"),
           ("Mixed_7c", "E"))


def keras_layout() -> KerasLayout:
    """Keras names none of InceptionV3's 94 conv + batch-norm pairs (``conv2d_N``,
    ``batch_normalization_N``): they are matched in creation order; the classifier is ``predictions``."""
    paths = list(_STEM) + [f"{block}.{b}" for block, kind in _BLOCKS for b in _BRANCHES[kind]]
    layers = [KerasLayer(None, kind, f"{p}.{sub}") for p in paths for kind, sub in (("conv", "conv"), ("bn", "bn"))]
    layers.append(KerasLayer("predictions", "dense", "fc", top=True))
    stem = "inception_v3_weights_tf_dim_ordering_tf_kernels"
    files = keras_weights_files("inception_v3", stem)
    return KerasLayout(layers=tuple(layers), preprocess=tf_spec(299), files=files,
                       build=partial(Inception3, keras=True))


# torchvision's evaluation transform for these weights: shorter side 342, centre crop 299, bilinear.
TORCHVISION_SPEC = PreprocessSpec(input_size=299, crop_pct=299 / 342, interpolation="bilinear")

register(ZooEntry(
    name="inception_v3",
    family="inception",
    builder=Inception3,
    preprocess=TORCHVISION_SPEC,
    num_params=27_161_264,
    weights=WeightSource(
        filename="inception_v3_google-0cc3c7bd.pth",
        url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
    ),
    description="Inception v3 with auxiliary head, torchvision weights ported from TensorFlow "
                "(ImageNet top-1 77.3%); also loads Keras .h5 weights",
    extra={"keras": keras_layout()},
))
