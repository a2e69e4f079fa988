"""Model zoo: ImageNet-pretrained architectures in the state-dict layout of their official weights."""

from imgclf.zoo.registry import DEFAULT_MODEL, WeightSource, ZooEntry, entries, get, is_zoo_name, names

__all__ = ["DEFAULT_MODEL", "WeightSource", "ZooEntry", "entries", "get", "is_zoo_name", "names", "build"]


def build(name: str, *, weights: str | None = None, pretrained: bool = True, allow_download: bool = True,
          include_top: bool = True):
    """Build zoo model ``name`` in eval mode with its weights loaded.

    ``weights``: a local ``.pth``/``.safetensors`` (or Keras-applications ``.h5``) file instead of the
    official one. ``pretrained=False`` returns random initialisation. ``include_top=False``: no
    classifier, the model returns pooled features (and takes Keras 'notop' files).
    """
    from imgclf.zoo.loading import build_model

    return build_model(get(name), weights=weights, pretrained=pretrained, allow_download=allow_download,
                       include_top=include_top)
