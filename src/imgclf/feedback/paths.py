"""Where the feedback store lives by default: user data, not a cache (nothing here can be rebuilt)."""

from __future__ import annotations

import os
from pathlib import Path


def default_store_dir() -> Path:
    """``$IMGCLF_HOME/feedback``, else ``$XDG_DATA_HOME/imgclf/feedback`` (``~/.local/share`` by default)."""
    if os.environ.get("IMGCLF_HOME"):
        return Path(os.environ["IMGCLF_HOME"]) / "feedback"
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "imgclf" / "feedback"


def sqlite_url(store_dir: Path) -> str:
    """The default database: ``feedback.db`` in the store folder."""
    return f"sqlite:///{(store_dir / 'feedback.db').resolve()}"
