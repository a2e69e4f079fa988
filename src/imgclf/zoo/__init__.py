"""Model zoo: ImageNet-pretrained architectures in the state-dict layout of their official weights.

:mod:`imgclf.zoo.registry` holds the entries and depends on nothing; each family module
(``vgg.py``, ``resnet.py`` ...) registers its models when imported; this package imports the
families (:mod:`imgclf.zoo.families`) the first time a lookup here needs them, not when it is
imported, because the families import torch and the torch-free server reads
:data:`DEFAULT_MODEL` and the entry types from this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.zoo import registry
from imgclf.zoo.registry import DEFAULT_MODEL, UnknownModelError, WeightSource, ZooEntry

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DEFAULT_MODEL", "UnknownModelError", "WeightSource", "ZooEntry", "build", "entries", "get",
           "is_zoo_name", "load_families", "names"]


def load_families() -> None:
    """Import every family module once; importing one registers its entries."""
    import imgclf.zoo.families  # noqa: F401


def get(name: str) -> ZooEntry:
    """The entry for ``name``; an unknown name raises :class:`UnknownModelError` listing the known ones."""
    load_families()
    return registry.get(name)


def names() -> list[str]:
    load_families()
    return registry.names()


def entries() -> list[ZooEntry]:
    load_families()
    return registry.entries()


def is_zoo_name(name: str) -> bool:
    load_families()
    return registry.is_zoo_name(name)


def build(name: str, *, weights: str | None = None, pretrained: bool = True, allow_download: bool = True,
          include_top: bool = True) -> nn.Module:
    """Build zoo model ``name`` in eval mode with its weights loaded.

    ``weights``: a local ``.pth``/``.safetensors`` (or Keras-applications ``.h5``) file instead of the
    official one. ``pretrained=False`` returns random initialisation. ``include_top=False``: no
    classifier, the model returns pooled features (and takes Keras 'notop' files).
    """
    from imgclf.zoo.loading import build_model

    return build_model(get(name), weights=weights, pretrained=pretrained, allow_download=allow_download,
                       include_top=include_top)
