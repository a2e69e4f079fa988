"""Numeric precision and memory layout: what this device can train in, and the autocast for each.

``fp32``; ``bf16`` (autocast, weights stay fp32); ``fp16`` (CUDA only, with loss scaling); or
``auto``, which on CUDA means bf16 where supported and on a CPU lets :mod:`imgclf.train.speed_probe`
time the candidates :func:`candidates` lists.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """The forward-pass context for ``precision`` (nothing for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def candidates(precision: str, channels_last: bool | None, device: torch.device,
               sample: torch.Tensor) -> tuple[list[str], list[bool]]:
    """The precisions and layouts (channels-last or not) worth trying for this request and device."""
    cuda = device.type == "cuda"
    if precision != "auto":
        precisions = [precision]
    elif cuda:
        precisions = ["bf16"] if torch.cuda.is_bf16_supported() else ["fp32"]
    else:
        precisions = ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]
    if sample.dim() != 4:
        layouts = [False]
    elif channels_last is not None:
        layouts = [channels_last]
    else:
        layouts = [True] if cuda else [False, True]
    if "fp16" in precisions and not cuda:
        raise ValueError("fp16 training needs a CUDA device; use bf16 or fp32 on the CPU")
    return precisions, layouts
