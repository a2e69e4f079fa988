"""Importers: turn a model made elsewhere (a whole Keras model file) into an imgclf model package.

Nothing here imports Keras or torch at module level; :func:`is_keras_file` is cheap enough for the
command line and the server's launcher to call on every ``--model`` argument.
"""

from __future__ import annotations

import os
from pathlib import Path

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


def is_keras_file(path: str | os.PathLike[str]) -> bool:
    """A ``--model`` argument that names a Keras model file (``.h5``/``.hdf5``/``.keras``).

    By name, so a missing file is reported as one (not looked up as a zoo model)."""
    p = Path(path)
    return p.suffix.lower() in KERAS_SUFFIXES and not p.is_dir()
