"""Turn a ``--model`` argument into a model: the one place every command and :func:`imgclf.load` do it.

A model argument is one of:

* a **model package** directory (``model.json`` + ``model.onnx``): runs on ONNX Runtime or
  OpenVINO at the precision asked for (:mod:`imgclf.engines.choice`), no torch;
* a **training checkpoint** file (``last.pt``/``best.pt`` of ``imgclf train``): runs in torch;
* a **Keras model file** (``.h5``/``.keras``): imported once into the package cache
  (:mod:`imgclf.importers`), then served like a package;
* a **zoo name** (``imgclf models``): runs in torch, or is exported once into the package cache
  when a package is needed (the server, ``engine="onnxruntime"``/``"openvino"``/``"auto"``, or a
  precision other than fp32);
* with a server's model directory, the name of a package in it.

:func:`locate` only looks at the filesystem (no torch, nothing loaded); :func:`open_model` and
:func:`load_engine` give an :class:`~imgclf.engine.Engine`; :func:`ensure_package` and
:func:`package_dirs` give packages, the latter without importing torch in the calling process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from imgclf.errors import UnknownModelError, UserError
from imgclf.importers import is_keras_file
from imgclf.model_store import ModelStore, model_stores, resolve_package
from imgclf.package import ModelPackage, PackageError, cache_dir, is_package_dir, load_package

if TYPE_CHECKING:
    from imgclf.engine import Engine
    from imgclf.engines.choice import EngineChoice
    from imgclf.zoo.registry import ZooEntry

ModelKind = Literal["package", "checkpoint", "keras", "zoo"]
# Which runtime runs the model. "default": ONNX Runtime for packages, torch for zoo names and
# checkpoints (no export step before the first answer); "auto": the fastest package engine and
# precision that passed its accuracy gate (imgclf.engines.choice); the others insist on one.
Runtime = Literal["default", "auto", "onnxruntime", "openvino", "torch"]
RUNTIMES: tuple[Runtime, ...] = ("default", "auto", "onnxruntime", "openvino", "torch")
PACKAGE_RUNTIMES = ("auto", "onnxruntime", "openvino")  # the ones that run a package


KIND_WORDS: dict[ModelKind, str] = {"package": "package directory", "checkpoint": "checkpoint",
                                     "keras": "Keras model file", "zoo": "zoo model"}


@dataclass(frozen=True)
class ModelRef:
    """What a model argument names, decided from the filesystem alone."""

    arg: str
    kind: ModelKind
    path: Path | None = None  # the package directory, checkpoint or Keras file


@dataclass(frozen=True)
class LoadedModel:
    """An engine ready to run, with what it was loaded from."""

    ref: ModelRef
    engine: Engine
    package: ModelPackage | None = None  # set when the engine runs a package (the fp32 one asked for)
    checkpoint_meta: Mapping[str, Any] | None = None  # the ``meta`` of a training checkpoint
    choice: EngineChoice | None = None  # the engine and precision chosen for a package, and why


def looks_like_path(arg: str) -> bool:
    return os.sep in arg or arg.startswith(".") or Path(arg).exists()


def locate(arg: str, *, model_dir: str | os.PathLike[str] | None = None) -> ModelRef:
    """Classify ``arg``; a path that names nothing usable is a :class:`~imgclf.package.PackageError`."""
    if is_keras_file(arg):
        if not Path(arg).is_file():
            raise PackageError(f"Keras model file not found: {arg}")
        return ModelRef(arg, "keras", Path(arg))
    if looks_like_path(arg):
        path = Path(arg)
        if path.is_file():
            if path.suffix.lower() == ".onnx":
                raise PackageError(f"{arg} is a bare ONNX file: wrap it into a model package with "
                                   "'imgclf import' (labels and preprocessing), then pass the package folder")
            if path.name == "model.json":
                raise PackageError(f"pass the package folder {str(path.parent)!r}, not its model.json")
            return ModelRef(arg, "checkpoint", path)
        if not path.exists():
            raise PackageError(f"{arg} does not exist (expected a model package folder, a training "
                               "checkpoint or a zoo model name; see 'imgclf models')")
        if not is_package_dir(path) and not ModelStore(path).exists():
            raise PackageError(f"{arg} is not a model package (a folder with model.json and model.onnx) "
                               "nor a folder of model versions (1/, 2/, ...)")
        return ModelRef(arg, "package", path)
    if model_dir is not None and ModelStore(Path(model_dir) / arg).exists():
        return ModelRef(arg, "package", Path(model_dir) / arg)
    return ModelRef(arg, "zoo")


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry ``name``; an unknown name is an :class:`~imgclf.errors.UnknownModelError`."""
    from imgclf import zoo

    try:
        return zoo.get(name)
    except KeyError as exc:  # the registry reports an unknown name as a KeyError with a readable message
        raise UnknownModelError(str(exc.args[0]) if exc.args else f"unknown model {name!r}") from None


def open_model(arg: str, *, weights: str | None = None, threads: int | None = None,
               runtime: Runtime = "default", precision: str | None = None,
               model_dir: str | os.PathLike[str] | None = None) -> LoadedModel:
    """Load ``arg`` (see the module docstring) as an engine on ``runtime`` at ``precision``
    (``None``: ``auto`` when ``runtime`` is ``auto``, else fp32)."""
    from imgclf.engines.choice import PRECISION_ARGS

    if runtime not in RUNTIMES:
        raise UserError(f"engine must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision is not None and precision not in PRECISION_ARGS:
        raise UserError(f"precision must be one of {', '.join(PRECISION_ARGS)}, got {precision!r}")
    ref = locate(arg, model_dir=model_dir)
    if weights and ref.kind != "zoo":
        raise UserError(f"--weights applies to zoo models, not to a {KIND_WORDS[ref.kind]}")
    # A package runtime or a precision other than fp32 needs a package (zoo names are exported once).
    needs_package = runtime in PACKAGE_RUNTIMES or precision not in (None, "fp32")
    if runtime == "torch" and precision not in (None, "fp32"):
        raise UserError(f"torch runs models at fp32 here; --precision {precision} runs a package "
                        "on --engine onnxruntime, openvino or auto")
    if ref.kind == "keras":
        if runtime == "torch":
            raise UserError(f"{arg} is a Keras model file, which is imported into a package for ONNX Runtime, "
                            "not run in torch")
        return _package_model(ref, ensure_package(arg), runtime, precision, threads)
    if ref.kind == "package":
        if runtime == "torch":
            raise UserError(f"{arg} is a model package, which runs on ONNX Runtime or OpenVINO, not torch")
        assert ref.path is not None
        return _package_model(ref, load_package(resolve_package(ref.path)), runtime, precision, threads)
    if ref.kind == "checkpoint":
        if needs_package:
            raise UserError(f"{arg} is a training checkpoint, which runs in torch at fp32; its run's package/ "
                            "folder runs on ONNX Runtime or OpenVINO")
        return _checkpoint_model(ref)
    if needs_package:
        return _package_model(ref, ensure_package(arg, weights=weights), runtime, precision, threads)
    return LoadedModel(ref, _zoo_engine(arg, weights))


def load_engine(model: str, *, weights: str | None = None, threads: int | None = None,
                runtime: Runtime = "default", precision: str | None = None) -> Engine:
    """The engine of :func:`open_model`: a package on ONNX Runtime or OpenVINO, a zoo name or
    checkpoint in torch."""
    return open_model(model, weights=weights, threads=threads, runtime=runtime, precision=precision).engine


def package_engine_args(runtime: str, precision: str | None) -> tuple[str, str]:
    """``--engine``/``--precision`` as given -> what :func:`imgclf.engines.choice.choose` takes
    for a package: the default engine is ONNX Runtime at fp32, or the fastest engine at a precision
    asked for; the default precision is ``auto`` with ``--engine auto``, else fp32."""
    engine = runtime if runtime in PACKAGE_RUNTIMES else ("onnxruntime" if precision in (None, "fp32") else "auto")
    return engine, precision or ("auto" if engine == "auto" else "fp32")


def _package_model(ref: ModelRef, package: ModelPackage, runtime: str, precision: str | None,
                   threads: int | None) -> LoadedModel:
    from imgclf.engines.choice import open_engine

    engine, choice = open_engine(package, *package_engine_args(runtime, precision), threads=threads)
    return LoadedModel(ref, engine, package=package, choice=choice)


def _zoo_engine(name: str, weights: str | None) -> Engine:
    from imgclf import zoo
    from imgclf.engines.torch import TorchEngine
    from imgclf.zoo.labels import get_labels
    from imgclf.zoo.loading import preprocess_for

    entry = zoo_entry(name)
    net = zoo.build(name, weights=weights)
    return TorchEngine(net, name=entry.name, labels=get_labels(entry.labels), spec=preprocess_for(entry, weights))


def _checkpoint_model(ref: ModelRef) -> LoadedModel:
    from imgclf.engines.torch import TorchEngine
    from imgclf.preprocess import PreprocessSpec
    from imgclf.train.loop import load_checkpoint
    from imgclf.train.models import model_from_checkpoint

    assert ref.path is not None
    ckpt = load_checkpoint(ref.path)
    meta: dict[str, Any] = dict(ckpt.get("meta") or {})
    try:
        net = model_from_checkpoint(ckpt)
        spec = PreprocessSpec.from_dict(meta["spec"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot rebuild the model of {ref.path}: {exc}") from None
    engine = TorchEngine(net, name=str(meta.get("recipe", ref.path.stem)), labels=[str(c) for c in meta["classes"]],
                         spec=spec)
    return LoadedModel(ref, engine, checkpoint_meta=meta)


def ensure_package(model: str, *, weights: str | None = None, quiet: bool = False) -> ModelPackage:
    """A package for ``model``: the directory itself, or the zoo model exported once into the cache.

    Exporting imports torch; callers that must stay torch-free (the server) use :func:`package_dirs`,
    which runs the export in a separate process.
    """
    ref = locate(model)
    if ref.kind == "checkpoint":
        raise PackageError(f"{model} is not a model package (a folder with model.json and model.onnx); "
                           "a training run writes its package to the run's package/ folder")
    if weights and ref.kind != "zoo":
        raise UserError(f"--weights applies to zoo models, not to a {KIND_WORDS[ref.kind]}")
    if ref.kind == "keras":
        from imgclf.importers.keras_cache import ensure_keras_package

        return ensure_keras_package(model, quiet=quiet)
    if ref.kind == "package":
        assert ref.path is not None
        return load_package(resolve_package(ref.path))
    entry = zoo_entry(model)  # an unknown name fails here, before any export message
    cached = cache_dir() / entry.name
    if weights is None and is_package_dir(cached):
        return load_package(cached)
    from imgclf.publish import export_zoo_model

    target = cached if weights is None else cache_dir() / f"{entry.name}-custom"
    if not quiet:
        print(f"exporting {model} to {target} (once) ...", flush=True)
    return export_zoo_model(model, target, weights=weights).package


def package_dirs(models: Sequence[str], model_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Model arguments -> package directories, without importing torch in this process (the server).

    No arguments means every package in ``model_dir``, else the default zoo model. Zoo names found
    neither in ``model_dir`` nor in the package cache, and Keras files not imported before, are
    exported by a spawned child process.
    """
    from imgclf.zoo.registry import DEFAULT_MODEL

    if model_dir is not None and not Path(model_dir).is_dir():
        raise UserError(f"--model-dir {model_dir} is not a directory")
    if not models:
        if model_dir is not None:
            return [s.root for s in model_stores(model_dir)]  # packages and version stores
        models = [DEFAULT_MODEL]
    found: dict[str, Path] = {}
    to_export: list[str] = []
    for arg in models:
        ref = locate(arg, model_dir=model_dir)
        if ref.kind == "checkpoint":
            raise PackageError(f"{arg} is not a model package (a folder with model.json and model.onnx)")
        if ref.kind == "keras":
            from imgclf.importers.keras_cache import (
                cached_keras_package,  # reads the cache only: no Keras, no torch
            )

            cached = cached_keras_package(arg)
            if cached is not None:
                found[arg] = cached
            else:
                to_export.append(arg)
        elif ref.path is not None:
            found[arg] = ref.path
        elif is_package_dir(cache_dir() / arg):
            found[arg] = cache_dir() / arg
        else:
            to_export.append(arg)
    found.update(_export_in_a_child(to_export))
    return [found[arg] for arg in models]


def _export_one(model: str) -> str:
    """Runs in the spawned child: export a zoo model or import a Keras file into the package cache
    (torch is imported there)."""
    return str(ensure_package(model).path)


def _export_in_a_child(names: list[str]) -> dict[str, Path]:
    if not names:
        return {}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return {name: Path(pool.submit(_export_one, name).result()) for name in names}
