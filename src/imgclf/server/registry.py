"""The models a server holds: load (with warm-up), look up, reload and unload, by name.

Runtime loads come from the configured model directory only: the name is checked with
:func:`imgclf.package.check_name` and the resolved path must stay inside that directory, so a
request can never point the server at another file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.engine import Engine, OutputKind
from imgclf.engines.choice import EngineChoice, open_engine
from imgclf.errors import UserError
from imgclf.package import ModelPackage, PackageError, check_name, is_package_dir, load_package
from imgclf.preprocess import PreprocessSpec
from imgclf.server.batcher import MicroBatcher
from imgclf.server.config import ServerConfig
from imgclf.server.errors import ApiError, bad_request, not_found
from imgclf.server.metrics import Metrics

log = logging.getLogger("imgclf.server")


@dataclass(eq=False)
class ServedModel:
    """A model as the server holds it: its engine, its batcher and the package it came from."""

    name: str  # what the routes call it (a package in the model directory: its folder's name)
    engine: Engine
    batcher: MicroBatcher
    package: ModelPackage | None = None
    choice: EngineChoice | None = None  # why this engine and precision (packages loaded by the server)
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.engine.version

    @property
    def labels(self) -> list[str]:
        return list(self.engine.labels)

    @property
    def spec(self) -> PreprocessSpec:
        return self.engine.spec

    @property
    def output_kind(self) -> OutputKind:
        return self.engine.output_kind

    @property
    def output_name(self) -> str:
        return self.package.meta.output_name if self.package else "logits"


class ModelRegistry:
    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.failures: dict[str, str] = {}  # name -> why its last load failed
        self.startup_done = False
        self.startup_failed: set[str] = set()  # startup models that failed and were not loaded since
        self._locks: dict[str, asyncio.Lock] = {}
        metrics.watch_queues(lambda: {n: m.batcher.depth for n, m in list(self.models.items())})
        metrics.watch_engines(lambda: {n: (m.engine.engine_name, m.engine.precision)
                                       for n, m in list(self.models.items())})

    # -- lookup ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once every startup model is loaded and warmed up (and at least one model is)."""
        return self.startup_done and bool(self.models) and not self.startup_failed

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise not_found(f"model {name!r} is not loaded (loaded: {known})", code="model_not_found")
        return model

    def default(self) -> ServedModel:
        name = self.config.default_model
        if name and name in self.models:
            return self.models[name]
        if not self.models:
            if not self.startup_done:
                raise ApiError(503, "not_ready", "the models are still loading; retry shortly",
                               headers={"Retry-After": "1"})
            raise not_found("no model is loaded (load one through the management API)", code="no_model")
        return next(iter(self.models.values()))

    def available(self) -> list[str]:
        """Package names in the model directory (loadable by name)."""
        if not self.config.model_dir:
            return []
        root = Path(self.config.model_dir).resolve()
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir()
                      if not p.name.startswith(".") and p.resolve().parent == root and is_package_dir(p))

    def package_path(self, name: str) -> Path:
        """The model directory's package for ``name``; the name never reaches the filesystem unchecked."""
        try:
            check_name(name)
        except PackageError as exc:
            raise bad_request(str(exc), code="invalid_model_name") from None
        if not self.config.model_dir:
            raise not_found("this server has no model directory (start it with --model-dir)",
                            code="model_not_found")
        root = Path(self.config.model_dir).resolve()
        path = (root / name).resolve()
        if path.parent != root or not is_package_dir(path):
            raise not_found(f"no package named {name!r} in the model directory", code="model_not_found")
        return path

    # -- loading --------------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _batcher(self, name: str, engine: Engine) -> MicroBatcher:
        c = self.config
        return MicroBatcher(engine.logits, name=name, max_batch_size=c.max_batch_size, max_delay_ms=c.max_delay_ms,
                            queue_size=c.queue_size, on_batch=self.metrics.on_batch(name))

    async def load_package_dir(self, path: str | Path, *, name: str | None = None) -> ServedModel:
        """Load a package, warm it up, then (re)place the model of that name atomically."""
        c = self.config

        def build() -> tuple[ModelPackage, Engine, EngineChoice]:
            package = load_package(path)
            precision = c.precision or ("auto" if c.engine == "auto" else "fp32")
            engine, choice = open_engine(package, c.engine, precision, threads=c.ort_threads)
            return package, engine, choice

        try:
            package, engine, choice = await asyncio.to_thread(build)
        except UserError as exc:  # a broken package, or an engine/precision it cannot run here
            self.failures[name or Path(path).name] = str(exc)
            raise PackageError(str(exc)) from None
        if name is None:
            # In the model directory a package is known by its folder's name (what load/unload use).
            inside = self.config.model_dir and Path(path).resolve().parent == Path(self.config.model_dir).resolve()
            name = Path(path).resolve().name if inside else package.name
        return await self.add_engine(engine, name=name, package=package, choice=choice)

    async def add_engine(self, engine: Engine, *, name: str, package: ModelPackage | None = None,
                         choice: EngineChoice | None = None) -> ServedModel:
        """Serve an engine under ``name`` (used for packages, and by embedding code and tests)."""
        check_name(name)
        async with self._lock(name):
            await asyncio.to_thread(self._warm_up, engine)
            model = ServedModel(name=name, engine=engine, batcher=self._batcher(name, engine), package=package,
                                choice=choice)
            model.batcher.start()
            old = self.models.get(name)
            self.models[name] = model
            self.failures.pop(name, None)
            self.startup_failed.discard(name)
            if old is not None:
                await old.batcher.stop()
            how = choice.describe() if choice is not None else f"{engine.engine_name} {engine.precision}"
            log.info("model %s v%s ready (%d classes) on %s", name, engine.version, len(engine.labels), how)
            return model

    def _warm_up(self, engine: Engine) -> None:
        # The first runs at a batch shape allocate ONNX Runtime's buffers; do that before serving.
        engine.warmup(sorted({1, self.config.max_batch_size}))

    async def load_by_name(self, name: str) -> ServedModel:
        path = self.package_path(name)
        try:
            return await self.load_package_dir(path, name=name)
        except PackageError as exc:
            raise ApiError(422, "invalid_package", str(exc)) from None

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            model = self.get(name)
            del self.models[name]
            await model.batcher.stop(drain_timeout_s=self.config.request_timeout_s)
            log.info("model %s unloaded", name)

    async def load_startup_models(self) -> None:
        for path in self.config.models:
            try:
                await self.load_package_dir(path)
            except Exception as exc:  # noqa: BLE001 - keep serving the others; readiness stays false
                self.failures[Path(path).name] = str(exc)
                self.startup_failed.add(Path(path).name)
                log.error("cannot load model %s: %s", path, exc)
        self.startup_done = True

    async def close(self) -> None:
        for name in list(self.models):
            model = self.models.pop(name)
            await model.batcher.stop(drain_timeout_s=1.0)
