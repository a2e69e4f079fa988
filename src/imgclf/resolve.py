"""Turn a ``--model`` argument (zoo name or package directory) into an engine or a package."""

from __future__ import annotations

import os
from pathlib import Path

from imgclf.errors import UserError
from imgclf.importers import is_keras_file
from imgclf.package import ModelPackage, cache_dir, is_package_dir, load_package


def looks_like_path(arg: str) -> bool:
    return os.sep in arg or arg.startswith(".") or Path(arg).exists()


def load_engine(model: str, *, weights: str | None = None, threads: int | None = None):
    """A package directory runs on ONNX Runtime; a zoo name runs in-process on torch."""
    if is_keras_file(model):
        model = str(ensure_package(model, weights=weights).path)  # imported once, then a package
    if looks_like_path(model):
        if weights:
            raise UserError("--weights applies to zoo models, not to a package directory")
        from imgclf.engine import OnnxEngine

        return OnnxEngine(load_package(model), threads=threads)
    from imgclf import zoo
    from imgclf.torch_engine import TorchEngine
    from imgclf.zoo.labels import get_labels
    from imgclf.zoo.loading import preprocess_for

    entry = zoo.get(model)
    net = zoo.build(model, weights=weights)
    return TorchEngine(net, name=entry.name, labels=list(get_labels(entry.labels)),
                       spec=preprocess_for(entry, weights))


def ensure_package(model: str, *, weights: str | None = None, quiet: bool = False) -> ModelPackage:
    """A package for ``model``: the directory itself, or the zoo model exported once into the cache.

    Exporting imports torch; callers that must stay torch-free (the server) run this in a
    separate process first.
    """
    if is_keras_file(model):
        if weights:
            raise UserError("--weights applies to zoo models, not to a Keras model file")
        from imgclf.importers.keras import ensure_keras_package

        return ensure_keras_package(model, quiet=quiet)
    if looks_like_path(model):
        if not is_package_dir(model):
            raise UserError(f"{model} is not a model package (no model.json)")
        return load_package(model)
    cached = cache_dir() / model
    if weights is None and is_package_dir(cached):
        return load_package(cached)
    from imgclf.export import export_zoo_model

    if not quiet:
        print(f"exporting {model} to {cached} (once) ...", flush=True)
    target = cached if weights is None else cache_dir() / f"{model}-custom"
    return export_zoo_model(model, target, weights=weights).package
