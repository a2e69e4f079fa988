"""The versioned model store: several versions of one model name, and which one is served.

Layout (one folder per model name inside a model directory, in the manner of Triton and TF Serving)::

    MODEL_DIR/<name>/1/model.json + model.onnx      a normal package per version (integer folder names)
    MODEL_DIR/<name>/2/...
    MODEL_DIR/<name>/versions.json                  {"default": "2", "history": ["1", "2"], "pinned": [],
                                                     "served": true, "updated": "..."}

A plain package folder (``MODEL_DIR/<name>/model.json``) is a store with one version, the one its
``model.json`` names. ``versions.json`` is the desired serving state, shared by every server on
the store: the default version (what unversioned routes answer with), the defaults before it
(newest last, for rollback), versions loaded besides the default (``pinned``) and whether the name
is served at all (``served``; absent: each server decides from its own start-up models). Without
the file the default is the newest version. Writes are atomic (a temporary file, then
``os.replace``), so a server reading the file sees the old state or the new one, never a mix.
Other folders in a package (``int8/`` variants, ``training/``) are not versions: a version's
folder name is a positive integer.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgclf.atomic import atomic_write
from imgclf.errors import UserError
from imgclf.package import META_FILE, PackageError, is_package_dir, load_package

VERSIONS_FILE = "versions.json"
HISTORY_LIMIT = 20  # defaults remembered for rollback


class StoreError(UserError):
    """A version store operation that cannot be done (no such version, nothing to roll back to)."""


def _is_version_name(name: str) -> bool:
    return name.isascii() and name.isdigit() and not name.startswith("0")


@dataclass(frozen=True)
class StoreState:
    """What ``versions.json`` says (see the module docstring)."""

    default: str | None = None
    history: tuple[str, ...] = ()
    pinned: tuple[str, ...] = ()
    served: bool | None = None
    updated: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer imgclf wrote: kept on rewrite

    @property
    def previous(self) -> str | None:
        """The default before the current one (what a rollback returns to)."""
        older = [v for v in self.history if v != self.default]
        return older[-1] if older else None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {**self.extra, "default": self.default, "history": list(self.history),
                             "pinned": list(self.pinned)}
        if self.served is not None:
            d["served"] = self.served
        d["updated"] = self.updated
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Path) -> StoreState:
        def versions(key: str) -> tuple[str, ...]:
            value = d.get(key) or []
            if not isinstance(value, list):
                raise StoreError(f"{where}: {key!r} must be a list of versions")
            return tuple(str(v) for v in value)

        default = d.get("default")
        served = d.get("served")
        if served is not None and not isinstance(served, bool):
            raise StoreError(f"{where}: 'served' must be true or false")
        known = {"default", "history", "pinned", "served", "updated"}
        return cls(default=None if default is None else str(default), history=versions("history"),
                   pinned=versions("pinned"), served=served, updated=d.get("updated"),
                   extra={k: v for k, v in d.items() if k not in known})


class ModelStore:
    """One model name's folder in the model directory: its versions and its serving state."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self.root.resolve().name

    @property
    def state_file(self) -> Path:
        return self.root / VERSIONS_FILE

    # -- versions -------------------------------------------------------------------------
    def is_plain(self) -> bool:
        """A single package folder (today's layout) rather than version folders."""
        return is_package_dir(self.root) and not self._version_dirs()

    def _version_dirs(self) -> dict[str, Path]:
        if not self.root.is_dir():
            return {}
        found = {p.name: p for p in self.root.iterdir() if _is_version_name(p.name) and (p / META_FILE).is_file()}
        return dict(sorted(found.items(), key=lambda kv: int(kv[0])))

    def versions(self) -> dict[str, Path]:
        """Version -> package folder, oldest first (a plain package: its one version)."""
        found = self._version_dirs()
        if found or not is_package_dir(self.root):
            return found
        try:
            version = load_package(self.root, verify_hash=False).meta.version
        except PackageError:
            return {}
        return {version: self.root}

    def exists(self) -> bool:
        """A package or a folder of versions (a package's contents are checked when it loads)."""
        return is_package_dir(self.root) or bool(self._version_dirs())

    def path(self, version: str) -> Path:
        versions = self.versions()
        if version not in versions:
            have = ", ".join(versions) or "none"
            raise StoreError(f"model {self.name!r} has no version {version!r} (versions: {have})")
        return versions[version]

    def next_version(self) -> int:
        """The number a newly published version gets: one above the highest (1 for a new store)."""
        numeric = [int(v) for v in self.versions() if v.isdigit()]
        return max(numeric, default=0) + 1

    # -- serving state --------------------------------------------------------------------
    def read_state(self) -> StoreState:
        try:
            raw = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return StoreState()
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {self.state_file}: {exc}") from None
        if not isinstance(raw, dict):
            raise StoreError(f"{self.state_file} must hold a JSON object")
        return StoreState.from_dict(raw, self.state_file)

    def default_version(self, state: StoreState | None = None) -> str | None:
        """The recorded default when that version exists, else the newest version."""
        state = state if state is not None else self.read_state()
        versions = self.versions()
        if state.default in versions:
            return state.default
        return next(reversed(versions), None)

    def wanted(self, state: StoreState | None = None) -> tuple[str | None, list[str]]:
        """(default, versions a server keeps loaded): the default, the previous default (so a
        rollback is instant and requests on it finish) and the pinned versions that exist."""
        state = state if state is not None else self.read_state()
        versions = self.versions()
        default = self.default_version(state)
        keep = [v for v in (default, state.previous, *state.pinned) if v in versions]
        return default, list(dict.fromkeys(keep))

    def write_state(self, state: StoreState) -> StoreState:
        """Write ``versions.json`` atomically (readers see the old file or the new one)."""
        state = replace(state, updated=_dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"))
        atomic_write(self.state_file, json.dumps(state.to_dict(), indent=2) + "\n")
        return state

    def set_default(self, version: str) -> StoreState:
        """Make ``version`` the default; the one before is remembered for :meth:`rollback`."""
        self.path(version)
        state = self.read_state()
        current = self.default_version(state)
        history = [v for v in state.history if v not in (version, current)]
        if current is not None and current != version:
            history.append(current)
        history = (history + [version])[-HISTORY_LIMIT:]
        return self.write_state(replace(state, default=version, history=tuple(history)))

    def rollback(self) -> StoreState:
        """Make the previous default the default again (the one it replaced is forgotten)."""
        state = self.read_state()
        current = self.default_version(state)
        versions = self.versions()
        older = [v for v in state.history if v != current and v in versions]
        if not older:
            raise StoreError(f"model {self.name!r} has no earlier default version to roll back to")
        target = older[-1]
        history = [v for v in state.history if v != current]
        return self.write_state(replace(state, default=target, history=tuple(history)))

    def pin(self, version: str) -> StoreState:
        """Keep ``version`` loaded besides the default (addressable as ``.../versions/{v}``)."""
        self.path(version)
        state = self.read_state()
        pinned = tuple(dict.fromkeys((*state.pinned, version)))
        return self.write_state(replace(state, pinned=pinned, served=True))

    def unpin(self, version: str) -> StoreState:
        state = self.read_state()
        return self.write_state(replace(state, pinned=tuple(v for v in state.pinned if v != version)))

    def set_served(self, served: bool) -> StoreState:
        return self.write_state(replace(self.read_state(), served=served))

    def stamp(self) -> tuple[int, ...]:
        """Cheap change detector for polling: versions.json's and the folder's inode, mtime and size
        (every write replaces the file, so its inode changes even within one mtime tick)."""
        out: list[int] = []
        for p in (self.state_file, self.root):
            try:
                st = p.stat()
                out += [st.st_ino, st.st_mtime_ns, st.st_size]
            except OSError:
                out += [0, 0, 0]
        return tuple(out)

    # -- publishing -----------------------------------------------------------------------
    def make_versioned(self) -> None:
        """Turn a plain package folder into version folders: its files move to ``<root>/<v>/``,
        ``v`` its ``model.json`` version (when a positive integer) or 1; that version is recorded
        as the default, so publishing another version does not change what is served."""
        if not self.is_plain():
            return
        version = load_package(self.root, verify_hash=False).meta.version
        version = version if _is_version_name(version) else "1"
        tmp = self.root / f".{version}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
        for entry in sorted(self.root.iterdir()):
            if entry == tmp or entry.name == VERSIONS_FILE or entry.name.startswith("."):
                continue
            entry.rename(tmp / entry.name)
        tmp.rename(self.root / version)
        self.write_state(replace(self.read_state(), default=version, history=(version,)))

    def pin_current_default(self) -> None:
        """Record today's default before a new version is added (without versions.json the newest
        version is the default, and a publish must not roll anything out)."""
        state = self.read_state()
        current = self.default_version(state)
        if current is not None and state.default != current:
            self.write_state(replace(state, default=current, history=(*state.history, current)))


def model_stores(model_dir: str | os.PathLike[str]) -> list[ModelStore]:
    """The model names in a model directory (plain packages and version stores), by name."""
    root = Path(model_dir)
    if not root.is_dir():
        return []
    stores = [ModelStore(p) for p in sorted(root.iterdir()) if not p.name.startswith(".") and p.is_dir()]
    return [s for s in stores if s.exists()]


def resolve_package(path: str | os.PathLike[str], version: str | None = None) -> Path:
    """A package folder from a package folder or a store folder (its ``version``, or its default)."""
    store = ModelStore(path)
    if version is None and is_package_dir(path) and store.is_plain():
        return Path(path)
    if version is None:
        version = store.default_version()
        if version is None:
            raise PackageError(f"{path} is neither a model package (model.json and model.onnx) nor a folder "
                               "of model versions (1/, 2/, ... each a package)")
    return store.path(version)
