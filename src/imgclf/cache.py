"""Where imgclf keeps what it can rebuild: zoo models exported on demand, imported Keras model files,
decoded datasets and frozen-backbone features."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home(kind: str) -> Path:
    """``$IMGCLF_HOME/<kind>``, else ``$XDG_CACHE_HOME/imgclf/<kind>`` (``~/.cache`` by default)."""
    if os.environ.get("IMGCLF_HOME"):
        return Path(os.environ["IMGCLF_HOME"]) / kind
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgclf" / kind
