"""Xception (Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions").

The module tree is timm's ``legacy_xception`` (the Keras weights as ported to PyTorch by Cadene):
``conv1``/``bn1``, ``conv2``/``bn2``, ``block1`` .. ``block12`` (``rep.<i>`` holding ReLU /
separable conv / BN triples, ``skip`` + ``skipbn`` where the shape changes), ``conv3``/``bn3``,
``conv4``/``bn4`` and ``fc``; a separable conv is ``conv1`` (depthwise) then ``pointwise``.

``keras=True`` builds Keras-applications' Xception in the same module tree: batch norm eps 1e-3,
and the strided blocks' 3x3 'same' max-pools pad as TensorFlow does (an even map gets its one
extra row and column at the bottom/right, where torch pads one on every side).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.preprocess import PreprocessSpec
from imgclf.zoo.keras import (
    KerasLayer,
    KerasLayout,
    keras_weights_files,
    tf_spec,
)
from imgclf.zoo.registry import WeightSource, ZooEntry, register
from imgclf.zoo.tf_padding import MaxPool2dSame


class SeparableConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, kernel_size, padding=padding, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """``reps`` x (ReLU, separable 3x3, BN), an optional stride-2 max-pool, plus a residual.

    ``grow_first`` widens to ``cout`` in the first separable conv, otherwise in the last.
    The layer order inside ``rep`` fixes the indices in the weights' key names.
    """

    def __init__(self, cin: int, cout: int, reps: int, stride: int = 1, *, start_with_relu: bool = True,
                 grow_first: bool = True, keras: bool = False) -> None:
        super().__init__()
        eps = 1e-3 if keras else 1e-5
        if cout != cin or stride != 1:
            self.skip: nn.Conv2d | None = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.skipbn: nn.BatchNorm2d | None = nn.BatchNorm2d(cout, eps=eps)
        else:
            self.skip = self.skipbn = None
        widths = [cin] + [cout] * reps if grow_first else [cin] * reps + [cout]
        layers: list[nn.Module] = []
        for i in range(reps):
            # Not in place: the block's input is still needed by the residual branch.
            layers += [nn.ReLU(inplace=i > 0), SeparableConv2d(widths[i], widths[i + 1]),
                       nn.BatchNorm2d(widths[i + 1], eps=eps)]
        if not start_with_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(MaxPool2dSame(3, stride) if keras else nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


class Xception(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, keras: bool = False) -> None:
        super().__init__()
        self.num_features = 2048
        eps = 1e-3 if keras else 1e-5
        self.conv1 = nn.Conv2d(in_chans, 32, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(32, eps=eps)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64, eps=eps)
        # Entry flow, middle flow (8 x 728), exit flow.
        self.block1 = Block(64, 128, 2, 2, start_with_relu=False, keras=keras)
        self.block2 = Block(128, 256, 2, 2, keras=keras)
        self.block3 = Block(256, 728, 2, 2, keras=keras)
        for i in range(4, 12):
            setattr(self, f"block{i}", Block(728, 728, 3, 1, keras=keras))
        self.block12 = Block(728, 1024, 2, 2, grow_first=False, keras=keras)
        self.conv3 = SeparableConv2d(1024, 1536)
        self.bn3 = nn.BatchNorm2d(1536, eps=eps)
        self.conv4 = SeparableConv2d(1536, self.num_features)
        self.bn4 = nn.BatchNorm2d(self.num_features, eps=eps)
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)
        x = F.relu(self.bn3(self.conv3(x)))
        return F.relu(self.bn4(self.conv4(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def remove_top(self) -> None:
        """No classifier: forward returns the pooled features (Keras ``include_top=False, pooling='avg'``)."""
        self.fc = nn.Identity()


def keras_layout() -> KerasLayout:
    """Keras Xception names: ``block1_conv1``/``_bn`` and ``block1_conv2``/``_bn`` (the stem),
    ``block<k+1>_sepconv<j>``/``_bn`` for this tree's ``block<k>``, ``block14_sepconv1/2`` for
    ``conv3``/``conv4``, ``predictions``; the four shortcut convolutions and their batch norms are
    unnamed (``conv2d_N``), matched in creation order."""
    layers = [KerasLayer("block1_conv1", "conv", "conv1"), KerasLayer("block1_conv1_bn", "bn", "bn1"),
              KerasLayer("block1_conv2", "conv", "conv2"), KerasLayer("block1_conv2_bn", "bn", "bn2")]
    for k in range(1, 13):
        reps = 3 if 4 <= k <= 11 else 2
        first = 0 if k == 1 else 1  # block1 starts without a ReLU
        if k in (1, 2, 3, 12):
            layers += [KerasLayer(None, "conv", f"block{k}.skip"), KerasLayer(None, "bn", f"block{k}.skipbn")]
        for j in range(reps):
            name, at = f"block{k + 1}_sepconv{j + 1}", first + 3 * j
            layers += [KerasLayer(name, "separable", f"block{k}.rep.{at}"),
                       KerasLayer(f"{name}_bn", "bn", f"block{k}.rep.{at + 1}")]
    for j, (conv, bn) in enumerate((("conv3", "bn3"), ("conv4", "bn4")), 1):
        layers += [KerasLayer(f"block14_sepconv{j}", "separable", conv),
                   KerasLayer(f"block14_sepconv{j}_bn", "bn", bn)]
    layers.append(KerasLayer("predictions", "dense", "fc", top=True))
    stem = "xception_weights_tf_dim_ordering_tf_kernels"
    files = keras_weights_files("xception", stem)
    return KerasLayout(layers=tuple(layers), preprocess=tf_spec(299), files=files,
                       build=partial(Xception, keras=True))


# timm's pretrained config for legacy_xception: 299 px, resize to floor(299 / 0.8975) = 333 then
# centre crop, bicubic, inputs scaled to [-1, 1].
TIMM_SPEC = PreprocessSpec(input_size=299, crop_pct=0.8975, interpolation="bicubic",
                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

register(ZooEntry(
    name="xception",
    family="xception",
    builder=Xception,
    preprocess=TIMM_SPEC,
    num_params=22_855_952,
    weights=WeightSource(
        filename="xception-43020ad28.pth",
        url="https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/xception-43020ad28.pth",
        # Cadene's file names carry a hex tag that is not documented as a sha256 prefix.
        name_has_hash=False,
    ),
    description="Xception, Keras weights as ported by Cadene (timm legacy_xception; ImageNet top-1 79.0%); "
                "also loads Keras .h5 weights",
    extra={"keras": keras_layout()},
))
