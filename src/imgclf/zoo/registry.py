"""The zoo registry: one entry per model name. It depends on no other zoo module.

An entry holds everything known about a pretrained model except its architecture code, which lives
in the family's own module (``vgg.py``, ``resnet.py`` ...): the builder, the preprocessing spec, the
label set, the parameter count and where the weights come from (timm's pretrained config and
torchvision's ``Weights`` enum, in one place). Family modules :func:`register` their entries when
imported; :mod:`imgclf.zoo` imports them (timm's ``_registry.py`` and ``models/__init__.py``).
The lookups here see what is registered so far: use :func:`imgclf.zoo.get` and friends, which
make sure every family is loaded first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgclf.errors import UnknownModelError
from imgclf.preprocess import PreprocessSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class WeightSource:
    """Where one weights file can come from, tried in this order: an installed package that ships
    it, the torch hub cache (``<hub>/checkpoints/<filename>``), then ``url``.

    ``sha256`` is the full digest when known; otherwise the file name carries a digest prefix
    (torchvision's ``name-<8 hex>.pth`` convention) which is checked as torch.hub does.
    """

    filename: str
    url: str | None = None
    sha256: str | None = None
    package: str | None = None  # importable module that ships the file
    package_path: str | None = None  # path of the file inside that module's directory
    license: str | None = None
    # False where the hex in the file name is not known to be a sha256 prefix.
    name_has_hash: bool = True

    @property
    def hash_prefix(self) -> str | None:
        if self.sha256:
            return self.sha256
        if not self.name_has_hash:
            return None
        stem = self.filename.rsplit(".", 1)[0]
        tail = stem.rsplit("-", 1)[-1]
        if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail.lower()):
            return tail.lower()
        return None


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    builder: Callable[..., torch.nn.Module]
    preprocess: PreprocessSpec
    num_params: int
    weights: WeightSource | None
    labels: str = "imagenet"
    num_classes: int = 1000
    description: str = ""
    # Rewrites an official state dict into this project's layout where the two differ.
    adapt_state_dict: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ZooEntry] = {}

DEFAULT_MODEL = "efficientnet_lite0"


def register(entry: ZooEntry) -> ZooEntry:
    """Add ``entry``; a family module calls this for each of its models when it is imported."""
    if entry.name in _REGISTRY:
        raise ValueError(f"zoo entry {entry.name!r} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove an entry if present (for tests and plugins that register temporary models)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> ZooEntry:
    """The registered entry ``name``; :class:`UnknownModelError` names the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none registered"
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def entries() -> list[ZooEntry]:
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def is_zoo_name(name: str) -> bool:
    return name in _REGISTRY
