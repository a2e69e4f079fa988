"""File identity for caches: path, size and modification time, fed to a hash."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class Hasher(Protocol):
    """What :func:`hash_files` needs of a hash object (``hashlib.sha256()`` and friends)."""

    def update(self, data: bytes, /) -> None: ...


def hash_files(h: Hasher, files: Sequence[Path]) -> None:
    """Feed every file's path, size and modification time to hasher ``h``: a cache keyed on it
    misses when a file is added, removed, replaced or edited."""
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
