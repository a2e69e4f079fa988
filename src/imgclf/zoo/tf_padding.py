"""TensorFlow's 'same' padding for strided layers, which Keras weights were trained with.

TF pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` in total and puts the odd one at the bottom/right;
torch pads symmetrically. For a stride-2 3x3 window on an even map that is (0, 1) against torch's
(1, 1): the same output size, every window shifted by one pixel. The padding is computed from the
input's size at run time, so any input size gets what Keras would do with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding TF's 'same' uses along one axis of length ``size``."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1),
             value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(int(x.shape[-2]), kernel[0], stride[0], dilation[0])
    left, right = same_padding(int(x.shape[-1]), kernel[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF 'same' padding (same parameters and state-dict keys as ``nn.Conv2d``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size, self.stride, self.dilation))  # type: ignore[arg-type]


class MaxPool2dSame(nn.Module):
    """3x3/2-style max pool with TF 'same' padding: the padding never wins the max."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = (self.kernel_size,) * 2, (self.stride,) * 2
        return F.max_pool2d(pad_same(x, k, s, value=float("-inf")), self.kernel_size, self.stride)
