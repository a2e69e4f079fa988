"""Worst-case memory and time of decode + preprocess at the pixel limit, one format per child process.

    python benchmarks/decode_bounds.py [--megapixels 40] [--out DIR]

Writes an image of just under ``--megapixels`` (default: the IMGCLF_MAX_PIXELS default, 40 MP) in
each costly shape (RGBA PNG, 16-bit PNG, float TIFF, CMYK and RGB JPEG, animated GIF, HEIC), then
in a fresh process per file runs the server's path (``imgclf.pipeline.prepare`` with the default
224 px spec) and reports the peak RSS it added and its wall time. These are the figures behind the
bounds stated in docs/images.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, sys, time
from pathlib import Path

def hwm_mb():  # VmHWM, not ru_maxrss: that one keeps the parent's peak across fork + exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

data = Path(sys.argv[1]).read_bytes()
from imgclf.pipeline import prepare
from imgclf.preprocess import PreprocessSpec
spec = PreprocessSpec()
import imgclf.images, PIL.Image, numpy  # imports counted in the baseline
base = hwm_mb()
t0 = time.perf_counter()
try:
    prepare(data, spec)
    outcome = "ok"
except Exception as exc:
    outcome = type(exc).__name__
dt = time.perf_counter() - t0
peak = hwm_mb()
print(json.dumps({"outcome": outcome, "s": dt, "added_mb": peak - base, "peak_mb": peak}))
"""


def write_files(folder: Path, megapixels: float) -> dict[str, Path]:
    from PIL import Image

    from imgclf.samples import reference_photo

    w = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    h = int(megapixels * 1e6 // w)
    base = Image.fromarray(reference_photo()).resize((w, h), Image.Resampling.BILINEAR)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w), dtype=np.uint8))
    rgba = base.copy()
    rgba.putalpha(noise)
    cases = {
        "jpeg-rgb.jpg": (base, "JPEG", {"quality": 90}),
        "jpeg-cmyk.jpg": (base.convert("CMYK"), "JPEG", {"quality": 90}),
        "png-rgba.png": (rgba, "PNG", {"compress_level": 1}),
        "png-16bit.png": (Image.fromarray(np.asarray(noise, np.uint16) * 257), "PNG", {"compress_level": 1}),
        "tiff-float.tif": (Image.fromarray(np.asarray(noise, np.float32)), "TIFF", {}),
        "gif-animated.gif": (base.quantize(64), "GIF", {"save_all": True, "append_images": [noise.convert("P")]}),
        "heic.heic": (base, "HEIF", {"quality": 50}),
    }
    out = {}
    for name, (img, fmt, kw) in cases.items():
        path = folder / name
        img.save(path, format=fmt, **kw)
        out[name] = path
        print(f"  wrote {name} ({path.stat().st_size / 1e6:.1f} MB, {w}x{h})", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--megapixels", type=float, default=None)
    ap.add_argument("--out", metavar="DIR", help="where to write the test images (default: a temporary folder)")
    args = ap.parse_args()
    from imgclf.images import DEFAULT_MAX_PIXELS

    mp = args.megapixels or DEFAULT_MAX_PIXELS / 1e6 * 0.99
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = write_files(folder, mp)
        print(f"## Decode + preprocess at the limit ({mp:.1f} MP), one process per file\n")
        print("| file | bytes | outcome | wall s | peak RSS added MB | bytes per pixel |\n|---|---:|---|---:|---:|---:|")
        for name, path in files.items():
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                print(f"| {name} | | child failed: {res.stderr.strip().splitlines()[-1:]} | {time.perf_counter() - t0:.1f} | | |")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"| {name} | {path.stat().st_size:,} | {r['outcome']} | {r['s']:.2f} | {r['added_mb']:.0f} | "
                  f"{r['added_mb'] * 2**20 / (mp * 1e6):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
