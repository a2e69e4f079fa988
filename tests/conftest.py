"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Torch's OpenMP threads spin by default; on a shared 2-core machine that starves everything else.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def sample_jpegs(tmp_path_factory) -> dict[str, Path]:
    """The real sample photos (chelsea, coffee, rocket, china, flower) as JPEG files, by name."""
    from imgclf.samples import write_sample_photos

    return {p.stem: p for p in write_sample_photos(tmp_path_factory.mktemp("photos"))}
