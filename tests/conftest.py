"""Shared test fixtures."""

from __future__ import annotations

import os

# Torch's OpenMP threads spin by default; on a shared 2-core machine that starves everything else.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
