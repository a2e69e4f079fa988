"""Image files by content: ``<root>/ab/cd/<sha256>``, each written once and atomically.

A file is written under ``<root>/tmp/``, fsynced, then renamed into place (and its folder fsynced),
so a crash leaves either the whole file under its hash or nothing there: a reader never sees half
an image. Names come only from a SHA-256 this module computed or checked, never from a request.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from imgclf.feedback.errors import StorageFullError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TMP = "tmp"
# Temporary files older than this are leftovers of a crashed writer (a live one takes milliseconds).
STALE_TMP_S = 3600.0
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(value: str) -> str:
    if not SHA256_RE.match(value):
        raise ValueError(f"not a SHA-256 hex digest: {value[:80]!r}")
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / TMP

    def path(self, sha256: str) -> Path:
        h = check_sha256(sha256)
        return self.root / h[:2] / h[2:4] / h

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def put(self, data: bytes, *, replace: bool = False) -> str:
        """Store ``data`` and return its SHA-256. An existing file is kept, unless ``replace``: then
        it is written again (a concurrent delete may be about to take the old one away)."""
        h = sha256_hex(data)
        final = self.path(h)
        if final.is_file() and not replace:
            return h
        tmp = self.tmp / f"{h}.{uuid.uuid4().hex}.tmp"
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)  # atomic: a concurrent writer of the same bytes wins or loses whole
            _fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _FULL:
                raise StorageFullError(f"cannot store the image: {exc.strerror} under {self.root}") from None
            raise
        return h

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def trash(self, sha256: str) -> Path | None:
        """Move a file out of sight (into tmp/) before the transaction that forgets it commits;
        :meth:`restore` puts it back if that transaction fails. None: there was no file."""
        trashed = self.tmp / f"{check_sha256(sha256)}.{uuid.uuid4().hex}.deleted"
        self.tmp.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.path(sha256), trashed)
        except FileNotFoundError:
            return None
        return trashed

    def restore(self, trashed: Path, sha256: str) -> None:
        final = self.path(sha256)
        if not final.exists():
            os.replace(trashed, final)
        else:
            trashed.unlink(missing_ok=True)

    def sweep_tmp(self, older_than_s: float = STALE_TMP_S) -> int:
        """Remove temporary files a crashed writer left; returns how many."""
        if not self.tmp.is_dir():
            return 0
        cutoff, n = time.time() - older_than_s, 0
        for f in self.tmp.iterdir():
            try:
                if f.stat().st_mtime < cutoff:
                    f.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n

    def files(self) -> Iterator[tuple[str, Path]]:
        """Every stored file as (name, path), temporary files excluded."""
        for a in sorted(self.root.glob("[0-9a-f][0-9a-f]")):
            for f in sorted(a.glob("[0-9a-f][0-9a-f]/*")):
                yield f.name, f
