"""imgclf: image classification toolkit and web service.

The Python API, for notebooks and scripts (the CLI commands are thin wrappers over it)::

    import imgclf
    clf = imgclf.load("efficientnet_lite0")     # zoo name, model package folder or checkpoint
    clf.predict("photo.jpg", k=5)                # -> [Prediction(index, label, score), ...]

Names are imported on first use, so ``import imgclf`` loads neither torch nor ONNX Runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from imgclf.classifier import Classifier, FileResult, load
    from imgclf.engine import Prediction

# public name -> module that defines it
_LAZY = {
    "load": "imgclf.classifier",
    "Classifier": "imgclf.classifier",
    "FileResult": "imgclf.classifier",
    "Prediction": "imgclf.engine",
}

__all__ = ["Classifier", "FileResult", "Prediction", "__version__", "finetune", "load", "train"]


def __getattr__(name: str) -> Any:
    import importlib

    if name in ("train", "finetune"):
        # Callable packages (imgclf.callable_package): `imgclf.train(...)` loads torch only when used.
        return importlib.import_module(f"imgclf.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"train", "finetune"})
