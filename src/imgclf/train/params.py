"""Parameters and their optimizer: param groups with per-group rates, the optimizer, frozen parts.

``param_groups``: list of dicts like torch optimizers take, each with ``params`` and any of ``lr``
(absolute), ``lr_scale`` (times ``config.lr``, default 1), ``weight_decay``, ``name``. Every
trainable parameter must be in exactly one group; each group gets a ``base_lr`` that the schedule
multiplies. Frozen parts: ``requires_grad=False`` before training (left out of the optimizer and of
DDP); BatchNorm layers whose parameters are all frozen stay in eval mode (:func:`freeze_frozen_norms`)
so their running statistics do not drift.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from imgclf.train.config import TrainConfig

OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


def build_param_groups(module: nn.Module, specs: Sequence[dict[str, Any]] | None,
                       config: TrainConfig) -> list[dict[str, Any]]:
    """Check ``specs`` against ``module``'s trainable parameters and fill in rates and names."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    specs = specs if specs is not None else [{"params": trainable}]
    seen: set[int] = set()
    groups = []
    for i, spec in enumerate(specs):
        g = dict(spec)
        g["params"] = list(g["params"])
        for p in g["params"]:
            if not p.requires_grad:
                raise ValueError(f"param group {g.get('name', i)} holds a frozen parameter; leave frozen ones out")
            if id(p) in seen:
                raise ValueError(f"a parameter appears in two param groups (group {g.get('name', i)})")
            seen.add(id(p))
        lr, scale = g.pop("lr", None), g.pop("lr_scale", 1.0)
        g["base_lr"] = float(lr) if lr is not None else config.lr * float(scale)
        g["lr"] = g["base_lr"]
        g.setdefault("weight_decay", config.weight_decay)
        g.setdefault("name", f"group{i}")
        groups.append(g)
    missing = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"trainable parameters in no param group: {missing[:5]}; freeze them "
                         "(requires_grad=False) or add them to a group")
    return groups


def make_optimizer(groups: list[dict[str, Any]], config: TrainConfig,
                   factory: OptimizerFactory | None = None) -> torch.optim.Optimizer:
    """``config.optimizer`` (sgd, adamw, adam) over ``groups``, or whatever ``factory`` builds."""
    if factory is not None:
        opt = factory(groups)
        for g in opt.param_groups:
            g.setdefault("base_lr", g["lr"])
        return opt
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, betas=(config.betas[0], config.betas[1]), weight_decay=config.weight_decay)


def main_lr(optimizer: torch.optim.Optimizer) -> float:
    """Current rate of the group holding the most parameters (what the history reports)."""
    group = max(optimizer.param_groups, key=lambda g: sum(p.numel() for p in g["params"]))
    return float(group["lr"])


def freeze_frozen_norms(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode (after ``model.train()``)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
