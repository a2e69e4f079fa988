"""Named training recipes: every hyperparameter in one dict per recipe, every trick named.

The seed ladder walks the original CIFAR-10 project's steps, each adding one thing to the one
before: ``vgg1`` -> ``vgg2`` -> ``vgg3`` (1-3 VGG blocks, no regularisation: they overfit), then
``vgg3-bn`` (+BatchNorm), ``vgg3-bn-l2`` (+L2 on the kernels), ``vgg3-bn-l2-dropout`` (+dropout,
growing from 0.2 to 0.5 with depth), ``vgg3-bn-l2-dropout-aug`` (+flip and translate
augmentation). ``vgg`` is the seed's final model: that last net with dropout on its dense layer
only, cutout, trained longer, with label smoothing and flip + translate test-time augmentation.
All steps share one optimiser (SGD with Nesterov momentum, a short linear warm-up and a linear
decay to zero), so each step differs from the one before only by what its name adds and the runs
take tens of epochs instead of hundreds.

``fast`` is airbench94 (Keller Jordan, 2024) on imgclf's trainer: the 2M-parameter net of
:class:`~imgclf.train.models.FastNet` with its frozen patch-whitening first layer, Nesterov SGD
with airbench's per-1024-example learning rate and decoupled weight decay, a 64x learning rate for
BatchNorm biases, label smoothing 0.2, the whitening bias trained for 3 epochs only, the
lookahead-EMA, alternating flips plus 2-pixel translations, and flip+translate test-time
augmentation that is exported inside the model package.

Any value can be overridden by its dotted path (``imgclf train --set opt.lr=0.02 --set
net.widths=16,32,64``); ``imgclf train --list-recipes`` prints them all.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgclf.errors import UserError

if TYPE_CHECKING:  # importing recipes (``--list-recipes``) must not load torch
    from torch import nn

    from imgclf.train.augment import Augment
    from imgclf.train.config import TrainConfig
    from imgclf.train.data import TrainingData
    from imgclf.train.hooks import Callback

# ---------------------------------------------------------------------------------------------
# the recipes
# ---------------------------------------------------------------------------------------------

_LADDER: dict[str, Any] = {
    "family": "vgg",
    "net": {
        "arch": "vgg1",
        "widths": [32, 64, 128],        # filters of blocks 1-3 (Conv3x3-ReLU x 2 + MaxPool each)
        "dense": 128,                   # the hidden dense layer
        "batchnorm": False,             # BatchNorm after every conv and the dense layer
        "dropout": 0.0,                 # one rate, or one per block plus one for the dense layer
    },
    "opt": {
        "epochs": 20,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.02,
        "momentum": 0.9,
        "nesterov": True,
        "l2": 0.0,                      # Keras-style L2: loss += l2 * sum(kernel ** 2), kernels only
        "schedule": "linear",           # warm up, then decay linearly
        "warmup": 0.05,                 # fraction of all steps spent warming up
        "start_factor": 0.1,            # warm-up starts at lr * start_factor
        "final_factor": 0.0,            # and training ends at lr * final_factor
        "label_smoothing": 0.0,
    },
    "aug": {
        "flip": "none",                 # none | random | alternating
        "translate": 0,                 # max shift in pixels (reflect padding)
        "cutout": 0,                    # side of a square set to the mean pixel
    },
    "eval": {"tta": 0},                 # 0 none, 1 mirror, 2 mirror + 1px translations
    "data": {"val_fraction": None},     # None: the dataset's val split, else its test split is watched
    "run": {"precision": "auto", "channels_last": None, "early_stopping": 0, "seed": 0},
}

_DROPOUT = [0.2, 0.3, 0.4, 0.5]  # the seed's "increasing dropout": blocks 1-3, then the dense layer
_AUG = {"flip": "random", "translate": 3, "cutout": 0}  # Keras' 10% width/height shift on 32 px

_STEPS: list[tuple[str, str, str, dict[str, Any]]] = [
    # (name, ladder label, what it adds, changes to the step before)
    ("vgg1", "1 VGG block", "baseline: Conv3x3-ReLU x2 + MaxPool, Dense 128", {"net": {"arch": "vgg1"}}),
    ("vgg2", "2 VGG blocks", "a second block (64 filters)", {"net": {"arch": "vgg2"}}),
    ("vgg3", "3 VGG blocks", "a third block (128 filters)", {"net": {"arch": "vgg3"}}),
    ("vgg3-bn", "+ BatchNorm", "BatchNorm after every conv and the dense layer",
     {"net": {"batchnorm": True}, "opt": {"lr": 0.05}}),
    ("vgg3-bn-l2", "+ L2", "L2 weight penalty 5e-4 on conv and dense kernels", {"opt": {"l2": 5e-4}}),
    ("vgg3-bn-l2-dropout", "+ dropout", "dropout 0.2/0.3/0.4 after the blocks, 0.5 after the dense layer",
     {"net": {"dropout": _DROPOUT}, "opt": {"epochs": 30}}),
    ("vgg3-bn-l2-dropout-aug", "+ augmentation", "random flips and 3-pixel translations",
     {"aug": _AUG, "opt": {"epochs": 40}}),
    # With the seed's dropout the final net underfits (train = test accuracy after 50 epochs), and
    # dropout in front of a BatchNorm layer shifts that layer's statistics between training and
    # test. So the final net keeps dropout on the dense layer only and regularises with cutout;
    # each change measured in docs/benchmarks.md.
    ("vgg", "final VGG", "dropout on the dense layer only, cutout 8, 80 epochs, label smoothing 0.1, "
     "flip + translate test-time augmentation",
     {"net": {"dropout": [0.0, 0.0, 0.0, 0.25]}, "aug": {"cutout": 8},
      "opt": {"epochs": 80, "label_smoothing": 0.1}, "eval": {"tta": 2}}),
]

FAST: dict[str, Any] = {
    "family": "fast",
    "net": {
        "arch": "fast",
        "widths": [64, 256, 256],       # the three conv groups
        "bn_momentum": 0.6,             # airbench's convention: weight of the old statistics
        "scaling_factor": 1 / 9,        # logits are scaled down by this
    },
    "opt": {
        "epochs": 9.9,
        "batch_size": 1024,
        "lr": 11.5,                     # airbench units: per 1024 examples of a *summed* loss
        "momentum": 0.85,               # Nesterov
        "weight_decay": 0.0153,         # airbench units: decoupled, per 1024 examples
        "bias_scaler": 64.0,            # BatchNorm biases learn 64x faster (no extra decay)
        "label_smoothing": 0.2,
        "whiten_bias_epochs": 3,        # the whitening layer's bias is frozen after this many epochs
        "schedule": "linear",
        "warmup": 0.23,
        "start_factor": 0.2,
        "final_factor": 0.07,
        "lookahead": True,              # EMA every 5 steps, decay 0.95**5 * progress**3
        "whiten_samples": 5000,         # training images used to compute the whitening filters
        "whiten_eps": 5e-4,             # added to the patch covariance's eigenvalues before 1/sqrt
    },
    "aug": {"flip": "alternating", "translate": 2, "cutout": 0},
    "eval": {"tta": 2},
    "data": {"val_fraction": None},
    "run": {"precision": "auto", "channels_last": None, "early_stopping": 0, "seed": 0},
}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _build_recipes() -> dict[str, dict[str, Any]]:
    recipes: dict[str, dict[str, Any]] = {}
    current = _LADDER
    for name, label, adds, changes in _STEPS:
        current = _merge(current, changes)
        recipes[name] = _merge(current, {"ladder": label, "adds": adds})
    recipes["fast"] = _merge(FAST, {"ladder": None, "adds": "airbench94 (94% on lossless CIFAR-10 in ~10 epochs)"})
    return recipes


RECIPES: dict[str, dict[str, Any]] = _build_recipes()
LADDER = [name for name, *_ in _STEPS]


def recipe_names() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of recipe ``name`` with dotted-path ``overrides`` applied (type-checked)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    hyp = copy.deepcopy(RECIPES[name])
    hyp["name"] = name
    for path, value in (overrides or {}).items():
        set_path(hyp, path, value)
    return hyp


def parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (numbers, true/false/null, lists), ``a,b`` lists, else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [parse_value(t.strip()) for t in text.split(",") if t.strip()]
    return text


def set_path(hyp: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node = hyp
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            raise UserError(f"unknown recipe setting {path!r}; settings: {', '.join(list_paths(hyp))}")
        node = node[k]
    leaf = keys[-1]
    if leaf not in node:
        raise UserError(f"unknown recipe setting {path!r}; settings: {', '.join(list_paths(hyp))}")
    old = node[leaf]
    if isinstance(value, str) and old is not None and not isinstance(old, str):
        value = parse_value(value)
    if isinstance(old, bool) and not isinstance(value, bool):
        raise UserError(f"{path} takes true or false, got {value!r}")
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    node[leaf] = value


def list_paths(hyp: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in hyp.items():
        if isinstance(v, dict):
            out += list_paths(v, f"{prefix}{k}.")
        elif k not in ("name", "ladder", "adds", "family"):
            out.append(f"{prefix}{k}")
    return out


# ---------------------------------------------------------------------------------------------
# turning a recipe into a model, a trainer configuration, param groups and callbacks
# ---------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What a recipe builds for a dataset: everything the trainer needs."""

    model: nn.Module
    config: TrainConfig
    param_groups: list[dict[str, Any]]
    callbacks: list[Callback]
    augment: Augment
    batch_size: int
    tta: int
    arch: str
    arch_options: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def arch_options(hyp: dict[str, Any]) -> dict[str, Any]:
    """The ``net`` settings the architecture's builder takes."""
    net = dict(hyp["net"])
    net.pop("arch")
    return net


def build(hyp: dict[str, Any], data: TrainingData, *, time_budget: float | None = None, progress: bool | None = None,
          init_model: bool = True) -> Setup:
    """Model + :class:`~imgclf.train.loop.TrainConfig` + groups + callbacks for recipe ``hyp`` on ``data``
    (a :class:`~imgclf.train.data.TrainingData`). ``init_model=False`` skips data-dependent
    initialisation (the whitening filters), for rebuilding a model to load a checkpoint into."""
    import torch

    from imgclf.train.callbacks import EarlyStopping
    from imgclf.train.data import Augment
    from imgclf.train.models import build_model

    run, opt = hyp["run"], hyp["opt"]
    torch.manual_seed(int(run["seed"]))
    arch = hyp["net"]["arch"]
    options = arch_options(hyp)
    try:
        model = build_model(arch, num_classes=len(data.classes), in_channels=data.spec.channels,
                            image_size=data.spec.input_size, **options)
        augment = Augment(**hyp["aug"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"recipe {hyp.get('name')}: {exc}") from None
    callbacks: list[Callback] = []
    if int(run["early_stopping"]) > 0:
        callbacks.append(EarlyStopping("val_loss", patience=int(run["early_stopping"])))
    if hyp["family"] == "fast":
        config, groups, extra = fast_training(hyp, model, data, init_model)
        callbacks += extra
    else:
        config, groups = vgg_training(hyp, model)
    config.precision = run["precision"]
    config.channels_last = run["channels_last"]
    config.seed = int(run["seed"])
    config.time_budget = time_budget
    config.progress = progress
    config.monitor = "val_acc"
    return Setup(model, config, groups, callbacks, augment, int(opt["batch_size"]), int(hyp["eval"]["tta"]),
                 arch, options)


def vgg_training(hyp: dict[str, Any], model: nn.Module) -> tuple[TrainConfig, list[dict[str, Any]]]:
    from torch import nn

    from imgclf.train.config import TrainConfig

    opt = hyp["opt"]
    kernels: list[nn.Parameter] = []
    others: list[nn.Parameter] = []
    for m in model.modules():
        for pname, p in m.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_kernel = pname == "weight" and isinstance(m, (nn.Conv2d, nn.Linear))
            (kernels if is_kernel else others).append(p)
    # Keras' l2(c) adds c * sum(w^2) to the loss: gradient 2c * w, i.e. weight decay 2c on kernels only.
    groups = [{"params": kernels, "weight_decay": 2 * float(opt["l2"]), "name": "kernels"},
              {"params": others, "weight_decay": 0.0, "name": "biases_and_norms"}]
    config = TrainConfig(
        epochs=float(opt["epochs"]), lr=float(opt["lr"]), optimizer=opt["optimizer"],
        momentum=float(opt["momentum"]), nesterov=bool(opt["nesterov"]), schedule=opt["schedule"],
        warmup=float(opt["warmup"]), start_factor=float(opt["start_factor"]),
        final_factor=float(opt["final_factor"]), label_smoothing=float(opt["label_smoothing"]),
    )
    return config, groups


def fast_training(hyp: dict[str, Any], model: nn.Module, data: TrainingData | None,
                  init_model: bool) -> tuple[TrainConfig, list[dict[str, Any]], list[Callback]]:
    """airbench's optimisation for the ``fast`` family: param groups, config and callbacks."""
    from imgclf.train.callbacks import FreezeGroupAfter, Lookahead
    from imgclf.train.config import TrainConfig
    from imgclf.train.data import normalize_tensor

    opt = hyp["opt"]
    if init_model:
        if data is None:
            raise ValueError("the whitening initialisation needs the training data")
        n = int(opt["whiten_samples"])
        model.init_whitening(normalize_tensor(data.train.images[:n], data.spec), eps=float(opt["whiten_eps"]))
    batch, momentum = int(opt["batch_size"]), float(opt["momentum"])
    # airbench states its rates for a loss summed over the batch, per 1024 examples, and divides
    # by how much Nesterov momentum amplifies a constant gradient; its weight decay is decoupled.
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr_sum = float(opt["lr"]) / kilostep
    wd_sum = float(opt["weight_decay"]) * batch / kilostep
    bias_lr_sum = lr_sum * float(opt["bias_scaler"])
    # The trainer averages the loss over the batch: gradients are 1/batch of summed ones, so the
    # same updates need lr * batch and weight_decay / batch (torch SGD multiplies decay by lr).
    norm_biases = [p for n, p in model.named_parameters() if ".norm" in n and p.requires_grad]
    whiten_bias = [model.whiten_bias]
    rest = [p for n, p in model.named_parameters()
            if p.requires_grad and ".norm" not in n and n != "whiten_bias"]
    groups = [
        {"params": norm_biases, "lr": bias_lr_sum * batch, "weight_decay": wd_sum / bias_lr_sum / batch,
         "name": "norm_biases"},
        {"params": whiten_bias, "lr": lr_sum * batch, "weight_decay": wd_sum / lr_sum / batch, "name": "whiten_bias"},
        {"params": rest, "lr": lr_sum * batch, "weight_decay": wd_sum / lr_sum / batch, "name": "weights"},
    ]
    config = TrainConfig(
        epochs=float(opt["epochs"]), lr=lr_sum * batch, optimizer="sgd", momentum=momentum, nesterov=True,
        schedule=opt["schedule"], warmup=float(opt["warmup"]), start_factor=float(opt["start_factor"]),
        final_factor=float(opt["final_factor"]), label_smoothing=float(opt["label_smoothing"]),
    )
    callbacks: list[Callback] = [FreezeGroupAfter("whiten_bias", int(opt["whiten_bias_epochs"]))]
    if opt["lookahead"]:
        callbacks.append(Lookahead())
    return config, groups, callbacks


def describe(hyp: dict[str, Any]) -> str:
    """One line per section, e.g. ``  opt: {"epochs": 20, ...}`` (the keys ``--set`` takes)."""
    return "\n".join(f"  {k}: {json.dumps(v)}" for k, v in hyp.items() if isinstance(v, dict))
