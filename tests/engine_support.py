"""Helpers for the engine tests: a package copy with an int8 variant made by ``imgclf quantize``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from imgclf.package import META_FILE

BACKEND = "nncf"  # imgclf quantize's default (bias correction)


def copy_package(src: Path, dst: Path, *, int8: bool = False) -> Path:
    """A copy of the package at ``src`` (with its ``int8/`` variant when ``int8``)."""
    ignore = shutil.ignore_patterns(".*") if int8 else shutil.ignore_patterns("int8", ".*")
    return Path(shutil.copytree(src, dst, ignore=ignore))


def quantize(package_dir: Path) -> Path:
    """``imgclf quantize PACKAGE`` (its default backend, calibration and gate; accuracy control off,
    which tests/test_quantize_accuracy.py covers: ranking Lite0's layers takes minutes):
    writes ``PACKAGE/int8`` with a gate record per installed engine."""
    from imgclf.package import load_package
    from imgclf.quantize.build import quantize_package
    from imgclf.quantize.fixes import Fixes
    from imgclf.quantize.sources import default_calibration, default_gate

    parent = load_package(package_dir)
    labelled, photos = default_gate(parent)
    done = quantize_package(parent, default_calibration(parent), labelled=labelled, photos=photos,
                            backend=BACKEND, fixes=Fixes(max_float_layers=0))
    return done.package.path


def drop_gates(package_dir: Path) -> None:
    meta = package_dir / META_FILE
    raw = json.loads(meta.read_text())
    raw.pop("gates", None)
    meta.write_text(json.dumps(raw, indent=2))
