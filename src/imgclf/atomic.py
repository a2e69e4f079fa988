"""Replace a file whole: readers see the old file or the new one, never half of either.

The text goes to a hidden temporary sibling (named by process and a random token, so concurrent
writers never share one), which is renamed over the target; a failed write leaves the target as it
was and removes the temporary file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], data: str | bytes, *, mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, creating its folder; ``mode`` sets the
    new file's permission bits (default: the umask's)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
