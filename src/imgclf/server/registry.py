"""The models a server holds: load (with warm-up), look up, reload and unload, by name and version.

Runtime loads come from the configured model directory only: the name is checked with
:func:`imgclf.package.check_name` and the resolved path must stay inside that directory, so a
request can never point the server at another file.

A name from a version store (:mod:`imgclf.model_store`) may have several versions loaded; the
default one answers the unversioned routes. Which versions are loaded and which is the default
follows the store's ``versions.json`` (:meth:`ModelRegistry.reconcile`): the management API writes
that file and reconciles, and every server on the same store polls it and does the same, so the
store is the source of truth for all replicas. Switching the default is one dictionary assignment:
a request holds the model it looked up, so requests in flight finish on the version they started on.
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
from imgclf.model_store import ModelStore, StoreError
from imgclf.package import ModelPackage, PackageError, check_name, load_package
from imgclf.preprocess import PreprocessSpec
from imgclf.server.batcher import MicroBatcher
from imgclf.server.config import ServerConfig
from imgclf.server.errors import ApiError, bad_request, conflict, not_found
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
    store_version: str | None = None  # its version folder's name, for a model from a version store

    @property
    def version(self) -> str:
        return self.store_version or self.engine.version

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
        self.models: dict[str, ServedModel] = {}  # name -> its default version (unversioned routes)
        self.loaded: dict[str, dict[str, ServedModel]] = {}  # name -> version -> every loaded version
        self.stores: dict[str, ModelStore] = {}  # names that follow a version store's versions.json
        self.failures: dict[str, str] = {}  # name -> why its last load failed
        self.startup_done = False
        self.startup_failed: set[str] = set()  # startup models that failed and were not loaded since
        self.draining = False  # set on shutdown: not ready, so load balancers stop sending requests
        self._locks: dict[str, asyncio.Lock] = {}
        self._stamps: dict[str, tuple[int, ...]] = {}  # store name -> versions.json stamp last acted on
        metrics.watch_queues(lambda: {n: m.batcher.depth for n, m in list(self.models.items())})
        metrics.watch_engines(lambda: {n: (m.engine.engine_name, m.engine.precision)
                                       for n, m in list(self.models.items())})

    # -- lookup ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once every startup model is loaded and warmed up (and at least one model is), until shutdown."""
        return self.startup_done and bool(self.models) and not self.startup_failed and not self.draining

    def get(self, name: str, version: str | None = None) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise not_found(f"model {name!r} is not loaded (loaded: {known})", code="model_not_found")
        if version is None:
            return model
        found = self.loaded.get(name, {}).get(version)
        if found is None:
            have = ", ".join(self.versions_of(name))
            raise not_found(f"version {version!r} of model {name!r} is not loaded (loaded: {have})",
                            code="model_not_found")
        return found

    def versions_of(self, name: str) -> list[str]:
        """The loaded versions of ``name``, oldest first."""
        return sorted(self.loaded.get(name, {}), key=lambda v: (len(v), v))

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
        """Model names in the model directory (plain packages and version stores, loadable by name)."""
        if not self.config.model_dir:
            return []
        root = Path(self.config.model_dir).resolve()
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir()
                      if not p.name.startswith(".") and p.resolve().parent == root and ModelStore(p).exists())

    def store(self, name: str) -> ModelStore:
        """The model directory's store (or plain package) for ``name``; the name never reaches the
        filesystem unchecked."""
        try:
            check_name(name)
        except PackageError as exc:
            raise bad_request(str(exc), code="invalid_model_name") from None
        if not self.config.model_dir:
            raise not_found("this server has no model directory (start it with --model-dir)",
                            code="model_not_found")
        root = Path(self.config.model_dir).resolve()
        path = (root / name).resolve()
        store = ModelStore(path)
        if path.parent != root or not store.exists():
            raise not_found(f"no package named {name!r} in the model directory", code="model_not_found")
        return store

    def package_path(self, name: str) -> Path:
        """The model directory's package for ``name`` (a version store: its default version)."""
        store = self.store(name)
        version = None if store.is_plain() else store.default_version()
        return store.root if version is None else store.path(version)

    # -- loading --------------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _batcher(self, name: str, version: str, engine: Engine) -> MicroBatcher:
        c = self.config
        return MicroBatcher(engine.logits, name=name, max_batch_size=c.max_batch_size, max_delay_ms=c.max_delay_ms,
                            queue_size=c.queue_size, on_batch=self.metrics.on_batch(name, version))

    async def _build(self, path: Path, name: str) -> tuple[ModelPackage, Engine, EngineChoice]:
        c = self.config

        def build() -> tuple[ModelPackage, Engine, EngineChoice]:
            package = load_package(path)
            precision = c.precision or ("auto" if c.engine == "auto" else "fp32")
            engine, choice = open_engine(package, c.engine, precision, threads=c.ort_threads)
            self._warm_up(engine)
            return package, engine, choice

        try:
            return await asyncio.to_thread(build)
        except UserError as exc:  # a broken package, or an engine/precision it cannot run here
            self.failures[name] = str(exc)
            raise PackageError(str(exc)) from None

    async def load_package_dir(self, path: str | Path, *, name: str | None = None) -> ServedModel:
        """Load a package (or a version store folder), warm it up, then (re)place the model of that
        name atomically."""
        p = Path(path)
        inside = self.config.model_dir and p.resolve().parent == Path(self.config.model_dir).resolve()
        store = ModelStore(p)
        if not store.is_plain() and store.exists():
            return await self.follow_store(name or p.resolve().name, store)
        package, engine, choice = await self._build(p, name or p.name)
        if name is None:
            # In the model directory a package is known by its folder's name (what load/unload use).
            name = p.resolve().name if inside else package.name
        return await self.add_engine(engine, name=name, package=package, choice=choice, warm=False)

    async def add_engine(self, engine: Engine, *, name: str, package: ModelPackage | None = None,
                         choice: EngineChoice | None = None, version: str | None = None, make_default: bool = True,
                         warm: bool = True) -> ServedModel:
        """Serve an engine under ``name`` (used for packages, and by embedding code and tests)."""
        check_name(name)
        async with self._lock(name):
            return await self._add(engine, name=name, package=package, choice=choice, version=version,
                                   make_default=make_default, warm=warm)

    async def _add(self, engine: Engine, *, name: str, package: ModelPackage | None, version: str | None,
                   make_default: bool, warm: bool, choice: EngineChoice | None = None) -> ServedModel:
        if warm:
            await asyncio.to_thread(self._warm_up, engine)
        version = version or engine.version
        model = ServedModel(name=name, engine=engine, batcher=self._batcher(name, version, engine), package=package,
                            choice=choice, store_version=version)
        model.batcher.start()
        versions = self.loaded.setdefault(name, {})
        same = versions.get(version)  # this version, loaded before: replaced by the new load
        before = self.models.get(name)
        versions[version] = model
        if make_default or before is None or before is same:
            self.models[name] = model  # the switch: one assignment; lookups made before keep their model
        self.failures.pop(name, None)
        self.startup_failed.discard(name)
        retired = [same] if same is not None else []
        if make_default and name not in self.stores and before is not None and before is not same:
            # Not from a version store: one version per name, the new one replaces the old.
            if versions.get(before.version) is before:
                del versions[before.version]
            retired.append(before)
        for old in retired:
            await old.batcher.stop()  # queued requests finish first
        how = choice.describe() if choice is not None else f"{engine.engine_name} {engine.precision}"
        log.info("model %s v%s ready (%d classes) on %s", name, version, len(engine.labels), how)
        return model

    def _warm_up(self, engine: Engine) -> None:
        # The first runs at a batch shape allocate ONNX Runtime's buffers; do that before serving.
        engine.warmup(sorted({1, self.config.max_batch_size}))

    async def load_by_name(self, name: str, version: str | None = None) -> ServedModel:
        """The management API's load: a version store records it in versions.json (so every server
        on the store loads it too) and follows the file; a plain package is (re)loaded."""
        store = self.store(name)
        try:
            if not store.is_plain():
                if version is not None:
                    store.pin(version)
                else:
                    store.set_served(True)
                await self.follow_store(name, store)
                return self.get(name, version)
            path = store.path(version) if version is not None else store.root
            return await self.load_package_dir(path, name=name)
        except StoreError as exc:
            raise not_found(str(exc), code="version_not_found") from None
        except PackageError as exc:
            raise ApiError(422, "invalid_package", str(exc)) from None

    async def follow_store(self, name: str, store: ModelStore) -> ServedModel:
        """Serve ``name`` from a version store and bring its loaded versions in line with it."""
        self.stores[name] = store
        await self.reconcile(name)
        return self.get(name)

    async def reconcile(self, name: str) -> None:
        """Load what the store wants loaded, switch the default, then unload the rest after draining.

        A version that fails to load is recorded in ``failures`` and the name keeps serving what it
        served; the failure is raised for the caller (the management API answers it).
        """
        store = self.stores[name]
        async with self._lock(name):
            self._stamps[name] = store.stamp()
            default, keep = store.wanted()
            if default is None:
                raise StoreError(f"model {name!r} has no versions in {store.root}")
            current = self.loaded.get(name, {})
            for version in keep:
                if version not in current:
                    package, engine, choice = await self._build(store.path(version), name)
                    await self._add(engine, name=name, package=package, choice=choice, version=version, make_default=False,
                                    warm=False)
            versions = self.loaded[name]
            if self.models.get(name) is not versions[default]:
                self.models[name] = versions[default]
                log.info("model %s: default version is now %s", name, default)
            for version in [v for v in versions if v not in keep]:
                model = versions.pop(version)
                await model.batcher.stop(drain_timeout_s=self.config.request_timeout_s)
                log.info("model %s v%s unloaded", name, version)

    async def unload(self, name: str, version: str | None = None) -> None:
        """Unload a name (every version), or one version that is neither the default nor kept for
        rollback. For a version store the change is written to versions.json for every server."""
        store = self.stores.get(name)
        if version is not None:
            model = self.get(name, version)
            if store is None:
                if model is self.models[name]:
                    return await self.unload(name)
                raise not_found(f"model {name!r} has no version {version!r} to unload", code="model_not_found")
            default, _ = store.wanted()
            state = store.read_state()
            if version in (default, state.previous):
                which = "the default" if version == default else "kept loaded for a rollback (the previous default)"
                raise conflict(f"version {version} of model {name!r} is {which}; switch the default first",
                               code="version_in_use")
            store.unpin(version)
            await self.reconcile(name)
            return None
        if store is not None and name in self.models:
            store.set_served(False)
        async with self._lock(name):
            self.get(name)
            del self.models[name]
            self.stores.pop(name, None)
            for model in self.loaded.pop(name, {}).values():
                await model.batcher.stop(drain_timeout_s=self.config.request_timeout_s)
            log.info("model %s unloaded", name)
        return None

    async def set_default(self, name: str, version: str) -> None:
        """Switch the default version: loaded and warmed up first (a version that cannot load is
        refused before the store changes), then recorded in versions.json and followed."""
        store = self._versioned(name)
        await self._preload(name, store, store.path(version), version)
        store.set_default(version)
        await self.follow_store(name, store)

    async def rollback(self, name: str) -> None:
        store = self._versioned(name)
        target = store.read_state().previous
        if target is not None and target in store.versions():
            await self._preload(name, store, store.path(target), target)
        store.rollback()
        await self.follow_store(name, store)

    async def _preload(self, name: str, store: ModelStore, path: Path, version: str) -> None:
        if version in self.loaded.get(name, {}):
            return
        try:
            package, engine, choice = await self._build(path, name)
        except PackageError as exc:
            raise ApiError(422, "invalid_package", str(exc)) from None
        self.stores[name] = store
        async with self._lock(name):
            await self._add(engine, name=name, package=package, choice=choice, version=version, make_default=False,
                            warm=False)

    def _versioned(self, name: str) -> ModelStore:
        store = self.store(name)
        if store.is_plain():
            raise conflict(f"model {name!r} is a single package, not a folder of versions "
                           f"(publish a version into it with: imgclf finetune ... --publish-to MODEL_DIR)",
                           code="not_versioned")
        return store

    # -- following the store ----------------------------------------------------------------
    async def poll_store(self) -> None:
        """One look at the model directory: act on every versions.json that changed since the last
        look (one directory listing and a stat per name; nothing is read when nothing changed)."""
        if not self.config.model_dir:
            return
        root = Path(self.config.model_dir)
        try:
            real = root.resolve()
            # Only folders really inside the directory (a symlink out of it is never followed).
            entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.resolve().parent == real
                       and p.is_dir()]
        except OSError as exc:
            log.warning("cannot list the model directory %s: %s", root, exc)
            return
        for path in entries:
            store = ModelStore(path)
            name = path.name
            if not store.state_file.is_file() or self._stamps.get(name) == store.stamp():
                continue
            try:
                state = store.read_state()
                if state.served is False:
                    self._stamps[name] = store.stamp()
                    if name in self.models:
                        await self.unload(name)
                elif (state.served or name in self.models) and not store.is_plain():
                    await self.follow_store(name, store)
                else:
                    self._stamps[name] = store.stamp()
            except (StoreError, PackageError, ApiError) as exc:
                self._stamps[name] = store.stamp()  # retried when the store changes again
                self.failures[name] = str(exc)
                log.error("model %s: cannot follow the store: %s", name, exc)

    async def watch_store(self, interval_s: float) -> None:
        """Poll the model directory every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll_store()
            except Exception:  # a bad poll must not end the watcher
                log.exception("polling the model store failed")

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
        self.models.clear()
        self.stores.clear()
        for name in list(self.loaded):
            for model in self.loaded.pop(name).values():
                await model.batcher.stop(drain_timeout_s=1.0)
