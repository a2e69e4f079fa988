"""Networks trained from scratch: the VGG-style CIFAR-10 nets of the seed ladder and the ``fast`` net.

Architectures are registered by name (:func:`register_arch`) so a checkpoint only has to record
``arch`` and ``arch_options`` to be rebuilt (:func:`build_model`); other packages (fine-tuning)
register their own builders the same way.

* ``vgg1`` / ``vgg2`` / ``vgg3``: blocks of (Conv3x3-ReLU) x 2 + MaxPool with widths 32/64/128,
  then Dense 128 and Dense ``num_classes``. Optional BatchNorm after every conv and dense layer,
  and dropout after each block and the dense layer (a single rate, or one rate per block + dense,
  as in the "increasing dropout" final model). L2 is a property of the optimiser (see recipes).
* ``fast``: an airbench94-style net: a frozen 2x2 patch-whitening conv, three conv groups
  (conv, pool, BN, GELU, conv, BN, GELU) of widths 64/256/256, max-pool, a bias-free linear
  head scaled by 1/9.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from imgclf.errors import UserError

_ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``builder(num_classes=, in_channels=, image_size=, **options)`` buildable by name."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ARCHS[name] = fn
        return fn

    return deco


def arch_names() -> list[str]:
    return sorted(_ARCHS)


class UnknownArchitectureError(UserError, KeyError):
    """An architecture name no builder is registered for. (Also a ``KeyError``, as it used to be.)"""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown architecture"


def build_model(arch: str, *, num_classes: int, in_channels: int = 3, image_size: int = 32,
                **options: Any) -> nn.Module:
    """Build a registered architecture. Unknown names raise :class:`UnknownArchitectureError`."""
    if arch not in _ARCHS:
        raise UnknownArchitectureError(f"unknown architecture {arch!r}; known: {', '.join(arch_names())}")
    return _ARCHS[arch](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)


# ---------------------------------------------------------------------------------------------
# VGG-style nets of the seed ladder
# ---------------------------------------------------------------------------------------------


class StemConv(nn.Conv2d):
    """A first conv on 1-3 input channels, kept in fp32 under autocast.

    oneDNN's bf16 weight-gradient kernel for so few input channels is pathologically slow in
    channels-last layout (about 50x its fp32 time on an AVX-512 CPU), while this layer holds a
    tiny share of the network's FLOPs. Outside autocast it is a plain ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _he_uniform(layer: nn.Module) -> None:
    # Keras' he_uniform kernels and zero biases, as the original Keras models used.
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class VGGNet(nn.Module):
    """``blocks`` x [Conv3x3-(BN)-ReLU, Conv3x3-(BN)-ReLU, MaxPool2, (Dropout)] -> Dense 128 -> Dense K."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 blocks: int = 3, widths: Sequence[int] = (32, 64, 128), dense: int = 128,
                 batchnorm: bool = False, dropout: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        if not 1 <= blocks <= len(widths):
            raise ValueError(f"blocks must be 1..{len(widths)}, got {blocks}")
        rates = list(dropout) if isinstance(dropout, (list, tuple)) else [float(dropout)] * (blocks + 1)
        if len(rates) != blocks + 1:
            raise ValueError(f"dropout needs one rate or {blocks + 1} rates (one per block + dense), got {len(rates)}")
        layers: list[nn.Module] = []
        cin, size = in_channels, image_size
        for b in range(blocks):
            width = int(widths[b])
            for _ in range(2):
                layers.append((StemConv if not layers else nn.Conv2d)(cin, width, 3, padding=1))
                if batchnorm:
                    # Keras order in the original: Conv -> ReLU -> BN.
                    layers += [nn.ReLU(inplace=True), nn.BatchNorm2d(width)]
                else:
                    layers.append(nn.ReLU(inplace=True))
                cin = width
            layers.append(nn.MaxPool2d(2))
            size //= 2
            if rates[b] > 0:
                layers.append(nn.Dropout(rates[b]))
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(cin * size * size, dense), nn.ReLU(inplace=True)]
        if batchnorm:
            head.append(nn.BatchNorm1d(dense))
        if rates[-1] > 0:
            head.append(nn.Dropout(rates[-1]))
        self.classifier = nn.Sequential(*head)
        self.fc = nn.Linear(dense, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _he_uniform(m)
        nn.init.xavier_uniform_(self.fc.weight)  # Keras' default (glorot) on the softmax layer
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.features(x)))


def _vgg_builder(blocks: int) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, in_channels: int = 3, image_size: int = 32, **options: Any) -> nn.Module:
        return VGGNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      blocks=blocks, **options)

    return build


for _n in (1, 2, 3):
    register_arch(f"vgg{_n}")(_vgg_builder(_n))


# ---------------------------------------------------------------------------------------------
# fast: airbench94-style net
# ---------------------------------------------------------------------------------------------


class FixedScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm with a fixed unit scale (no learnable weight), learnable bias, tiny eps."""

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12) -> None:
        # airbench's momentum is the weight of the old statistics; torch's is that of the new ones.
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class _DiracConv(nn.Conv2d):
    """3x3 'same' conv without bias whose first ``in_channels`` filters start as identities."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=3, padding=1, bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[: min(cin, cout)])


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = _DiracConv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FixedScaleBatchNorm(cout, bn_momentum)
        self.conv2 = _DiracConv(cout, cout)
        self.norm2 = FixedScaleBatchNorm(cout, bn_momentum)
        self.activ = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """airbench94's network. Call :meth:`init_whitening` with training images before training."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 widths: Sequence[int] = (64, 256, 256), bn_momentum: float = 0.6,
                 scaling_factor: float = 1 / 9, whiten_kernel: int = 2) -> None:
        super().__init__()
        whiten_width = 2 * in_channels * whiten_kernel**2
        self.whiten = nn.Conv2d(in_channels, whiten_width, whiten_kernel, padding=0, bias=False)
        self.whiten.weight.requires_grad_(False)
        # The bias lives outside the conv: its gradient is then a plain sum, whereas a conv bias
        # makes oneDNN run the (slow, 3-channel) weight-gradient kernel for a frozen weight.
        self.whiten_bias = nn.Parameter(torch.zeros(whiten_width))
        self.act = nn.GELU()
        w1, w2, w3 = (int(w) for w in widths)
        self.layers = nn.Sequential(
            ConvGroup(whiten_width, w1, bn_momentum),
            ConvGroup(w1, w2, bn_momentum),
            ConvGroup(w2, w3, bn_momentum),
        )
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.scaling_factor = float(scaling_factor)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first conv to whiten the ``k x k`` patches of ``images`` (normalised, NCHW).

        Each eigenvector of the patch covariance becomes a filter scaled by 1/sqrt(eigenvalue),
        used with both signs so the GELU after it keeps the information.
        """
        k = self.whiten.kernel_size[0]
        c = images.shape[1]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        cov = patches.double().T @ patches.double() / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        # unfold + transpose(1, 3) lays each patch out as (c, kh, kw), the conv filter layout.
        filters = (eigenvectors / torch.sqrt(eigenvalues + eps)[:, None]).reshape(c * k * k, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Whitening scales the patch directions of least variance up ~40x; from a bf16 input their
        # channels would be up to 20% rounding noise (and differ from the fp32 served model). The
        # conv is tiny, so it runs in its weight's precision (fp32) whatever the autocast around it.
        with torch.autocast(x.device.type, enabled=False):
            x = self.whiten(x.to(self.whiten.weight.dtype)) + self.whiten_bias.view(1, -1, 1, 1)
        x = self.layers(self.act(x))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * self.scaling_factor


@register_arch("fast")
def _build_fast(*, num_classes: int, in_channels: int = 3, image_size: int = 32, **options: Any) -> nn.Module:
    return FastNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)


# ---------------------------------------------------------------------------------------------
# Test-time augmentation, inside the model so an exported package serves exactly what was measured
# ---------------------------------------------------------------------------------------------


class TTA(nn.Module):
    """Average logits over flips (level 1) and +-1 pixel reflect-padded translations (level 2).

    Level 2 is airbench's scheme: 0.5 * mirror(x) + 0.25 * mirror(shift(x, -1)) + 0.25 * mirror(shift(x, +1)).
    The flip is an index gather, which every ONNX runtime handles.
    """

    def __init__(self, model: nn.Module, level: int = 2) -> None:
        super().__init__()
        if level not in (1, 2):
            raise ValueError(f"TTA level must be 1 or 2, got {level}")
        self.model = model
        self.level = level

    # Sizes are taken as Python ints: a package has one input size, so the exported graph can use
    # constant indices (dynamic shape arithmetic here trips ONNX Runtime's layout optimiser).
    def _mirror(self, x: torch.Tensor) -> torch.Tensor:
        w = int(x.shape[-1])
        idx = torch.arange(w - 1, -1, -1, device=x.device)
        return 0.5 * self.model(x) + 0.5 * self.model(x.index_select(-1, idx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self._mirror(x)
        if self.level == 1:
            return logits
        h, w = int(x.shape[-2]), int(x.shape[-1])
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = 0.5 * self._mirror(padded[:, :, 0:h, 0:w]) + 0.5 * self._mirror(padded[:, :, 2:h + 2, 2:w + 2])
        return 0.5 * logits + 0.5 * shifted


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the served model of a trainer checkpoint (``last.pt`` or ``best.pt``): the architecture
    named in its ``meta``, its weights, and the test-time augmentation the run used, in eval mode."""
    meta = ckpt.get("meta") or {}
    if "arch" not in meta or "classes" not in meta or "spec" not in meta:
        raise ValueError("the checkpoint's meta lacks arch/classes/spec; it was not written by imgclf train")
    spec = meta["spec"]
    model = build_model(meta["arch"], num_classes=len(meta["classes"]), in_channels=1 if spec.get("grayscale") else 3,
                        image_size=int(spec["input_size"]), **dict(meta.get("arch_options") or {}))
    model.load_state_dict(ckpt["model"])
    model = model.to(memory_format=torch.contiguous_format).float().eval()
    tta = int(meta.get("tta") or 0)
    return (TTA(model, tta) if tta else model).eval()
