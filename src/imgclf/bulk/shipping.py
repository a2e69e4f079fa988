"""Getting the model package to every worker: its files travel with the actors, not as a path.

On a cluster the driver's package folder (a path, or a zoo model exported into the driver's cache)
does not exist on the other nodes. The driver reads the package's files once (:func:`pack`); each
actor writes them into a folder of its node's temporary directory named by their hash
(:func:`unpack`), so the actors of one node, and later jobs, share one copy.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imgclf.package import is_package_dir


@dataclass(frozen=True)
class PackageFiles:
    """The top-level files of a package folder, by name, and a hash over all of them."""

    files: dict[str, bytes]
    digest: str


def pack(package_dir: str | os.PathLike[str]) -> PackageFiles:
    files = {f.name: f.read_bytes() for f in sorted(Path(package_dir).iterdir()) if f.is_file()}
    h = hashlib.sha256()
    for name, data in files.items():
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return PackageFiles(files, h.hexdigest())


def unpack(package: PackageFiles, root: str | os.PathLike[str] | None = None) -> Path:
    """The package as a folder on this node: written once (aside, then renamed), then reused."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir()) / "imgclf-bulk-packages"
    target = base / package.digest[:32]
    if is_package_dir(target):
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for name, data in package.files.items():
            (tmp / name).write_bytes(data)
        try:
            tmp.rename(target)
        except OSError:  # another actor of this node renamed its copy first
            if not is_package_dir(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
