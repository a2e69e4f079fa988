"""Split any zoo model into a feature extractor and a new classifier head.

Every family names its final classification layer in ``ZooEntry.extra["classifier"]`` (a dotted
module path such as ``_fc``, ``fc`` or ``classifier.1``); failing that, the last ``Linear`` or 1x1
``Conv2d`` with ``num_classes`` outputs is taken. Replacing that one layer by ``nn.Identity`` leaves
the network ending in its pooled feature vector whatever the family (global pooling, VGG's fc7,
SqueezeNet's pooled 512 channels), so one code path serves them all.

The backbone's parameters are also cut into contiguous groups from input to output, so the
unfrozen stage can give early layers smaller learning rates than late ones (layer-wise rates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imgclf.zoo.registry import ZooEntry

# Containers whose children are the network's successive stages/blocks.
_SEQUENCES = (nn.Sequential, nn.ModuleList)


def find_classifier(model: nn.Module, entry: ZooEntry) -> str:
    """Dotted path of the layer producing the ``entry.num_classes`` class scores."""
    named = entry.extra.get("classifier")
    if named:
        model.get_submodule(named)  # raises AttributeError if the family changed its layout
        return str(named)
    found = None
    for path, module in model.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == entry.num_classes) or (
            isinstance(module, nn.Conv2d) and module.out_channels == entry.num_classes
            and module.kernel_size == (1, 1)
        ):
            if not path.startswith("AuxLogits"):  # Inception's auxiliary head is not the classifier
                found = path
    if found is None:
        raise ValueError(f"cannot find the classification layer of {entry.name}")
    return found


def _replace(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    parent_path, _, last = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent.get_submodule(last)
    setattr(parent, last, new)
    return old


def _units(model: nn.Module) -> list[nn.Module]:
    """Top-level modules in definition order, with stage containers opened one level."""
    units: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, _SEQUENCES):
            units.extend(child.children())
        else:
            units.append(child)
    return [u for u in units if any(True for _ in u.parameters())]


def layer_groups(backbone: nn.Module, n_groups: int = 4) -> list[list[nn.Parameter]]:
    """Backbone parameters in ``n_groups`` contiguous groups, input side first.

    Units (stem, blocks, head convolution ...) are split by count, i.e. by depth, not by size:
    depth is what layer-wise rates are about (VGG's fc6 alone outweighs all its convolutions).
    """
    units = _units(backbone)
    n = max(1, min(n_groups, len(units)))
    bounds = [round(i * len(units) / n) for i in range(n + 1)]
    groups: list[list[nn.Parameter]] = []
    seen: set[int] = set()
    for a, b in zip(bounds, bounds[1:], strict=False):
        group = []
        for unit in units[a:b]:
            for p in unit.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    group.append(p)
        groups.append(group)
    # Parameters held directly by the model (rare) train with the earliest group.
    stray = [p for p in backbone.parameters() if id(p) not in seen]
    if groups:
        groups[0] = stray + groups[0]
    return [g for g in groups if g]


def pooled(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A headless backbone's output as ``(N, D)`` features; Inception in training mode returns a
    tuple whose first item is the main branch."""
    if isinstance(out, tuple):
        out = out[0]
    return torch.flatten(out, 1)


class FineTuneNet(nn.Module):
    """``head(backbone(x))``; with ``freeze_bn`` batch-norm layers stay in inference mode.

    Frozen statistics keep the unfrozen stage consistent with the cached features the head was
    trained on, and small fine-tuning batches cannot wreck the ImageNet statistics.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, freeze_bn: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> FineTuneNet:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return pooled(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Split:
    net: FineTuneNet
    feature_dim: int
    classifier: str  # dotted path of the replaced layer in the original model
    groups: list[list[nn.Parameter]]  # backbone parameters, input side first

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    @property
    def head(self) -> nn.Module:
        return self.net.head


def split_model(model: nn.Module, entry: ZooEntry, num_classes: int, *, input_size: int,
                channels: int = 3, n_groups: int = 4, seed: int = 0) -> Split:
    """Turn a pretrained zoo model into backbone + fresh ``num_classes`` head (modifies ``model``)."""
    path = find_classifier(model, entry)
    _replace(model, path, nn.Identity())
    if getattr(model, "AuxLogits", None) is not None:
        # Inception's auxiliary ImageNet head: a training-time loss for the old classes, dead weight here.
        model.AuxLogits = None
    model.eval()
    with torch.inference_mode():
        feature_dim = int(pooled(model(torch.zeros(1, channels, input_size, input_size))).shape[1])
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        # Small initial weights: near-uniform first predictions, as the zoo classifiers start.
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    net = FineTuneNet(model, head)
    return Split(net=net, feature_dim=feature_dim, classifier=path, groups=layer_groups(model, n_groups))
