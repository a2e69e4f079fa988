"""What JPEG compression costs a 32x32 classifier, measured without a lossless copy of the data.

    python benchmarks/jpeg_cost.py recompress SRC DST [--quality 75] [--subsampling 4:2:0] [--shift 3]
    python benchmarks/jpeg_cost.py distortion --data SRC [--quality 75] [--subsampling 4:2:0] [--shift 3]
    python benchmarks/jpeg_cost.py idx-to-folder IDX_DIR DST [--quality 75 | --png]

CIFAR-10 as JPEG folders has already been through one JPEG encode (quality 75, 4:2:0). Its
lossless original is not at hand, so the cost of that first encode cannot be measured directly.
What can be measured is the cost of a *second* encode at the same settings: ``recompress`` writes a
copy of an image-folder dataset in which every image has been JPEG-encoded once more, on a block
grid shifted by ``--shift`` pixels (an aligned re-encode at the same quality changes little, since
it re-quantizes coefficients that are already quantized). Training the same recipe on both copies
gives the accuracy cost of one more generation.

``distortion`` says how that second generation compares in size with the first: the PSNR of
encoding compression-free 32x32 colour images (crops of the photos scikit-image and scikit-learn
ship, area-downsampled at least 4x) at the same settings, next to the PSNR of the shifted
re-encode of the dataset's own images. When the first takes away more than the second, the
second generation's accuracy cost is a lower estimate of what the first one cost.

``idx-to-folder`` measures a first generation directly on a set that is lossless at the source:
it writes an IDX dataset (Fashion-MNIST) as ``train/`` and ``test/`` class folders of JPEGs at the
given quality (grayscale, so no chroma subsampling), or of PNGs with ``--png``, to train on with
``imgclf train --data DST --grayscale`` next to the IDX original.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.images import decode, decode_file, image_files

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def jpeg_roundtrip(rgb: np.ndarray, quality: int, subsampling: str, shift: int) -> np.ndarray:
    """Encode ``rgb`` (H, W, 3 uint8) as a JPEG and decode it, the block grid moved by ``shift``.

    The image is edge-padded by ``shift`` pixels at the top and left before encoding and cropped
    back after, so its pixels fall at a different place in the 8x8 (and 16x16 chroma) blocks.
    """
    padded = np.pad(rgb, ((shift, 0), (shift, 0), (0, 0)), mode="edge") if shift else rgb
    buf = io.BytesIO()
    Image.fromarray(padded).save(buf, "JPEG", quality=quality, subsampling=SUBSAMPLING[subsampling])
    out = decode(buf.getvalue())
    return out[shift:, shift:]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def psnr_summary(scores: list[float]) -> str:
    """Mean and median, leaving out identical pairs (infinite PSNR)."""
    finite = [s for s in scores if np.isfinite(s)]
    return f"PSNR mean {np.mean(finite):.2f} dB, median {np.median(finite):.2f} dB"


def new_folder(path: str) -> Path:
    """``path`` as a destination that holds nothing yet, so nothing already there is overwritten."""
    dst = Path(path)
    if dst.exists() and any(dst.iterdir()):
        sys.exit(f"error: {dst} exists and is not empty; choose a new folder")
    return dst


def _recompress_chunk(job: tuple[list[str], str, str, int, str, int]) -> list[float]:
    files, src, dst, quality, subsampling, shift = job
    scores = []
    for f in files:
        path = Path(f)
        rgb = decode_file(path)
        out = jpeg_roundtrip(rgb, quality, subsampling, shift)
        target = Path(dst) / path.relative_to(src).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Stored losslessly so that the copy carries exactly one more JPEG generation, no more.
        Image.fromarray(out).save(target, "PNG")
        scores.append(psnr(rgb, out))
    return scores


def recompress(args: argparse.Namespace) -> None:
    src = Path(args.src)
    if not src.is_dir():
        sys.exit(f"error: {src} is not a folder")
    dst = new_folder(args.dst)
    files = image_files(src)
    if not files:
        sys.exit(f"error: no images under {src}")
    workers = args.workers or os.cpu_count() or 1
    chunks = [files[i::workers * 8] for i in range(workers * 8)]
    jobs = [([str(f) for f in c], str(src), str(dst), args.quality, args.subsampling, args.shift) for c in chunks]
    with ProcessPoolExecutor(workers) as pool:
        scores = [s for part in pool.map(_recompress_chunk, jobs) for s in part]
    print(f"{len(scores)} images from {src} -> {dst} (PNG, one more JPEG generation: quality {args.quality}, "
          f"{args.subsampling}, grid shifted {args.shift} px)")
    print(f"the new generation against its input: {psnr_summary(scores)}")


def _reference_photos(size: int, crops: int) -> list[np.ndarray]:
    """Small colour images that carry no compression of their own.

    Random square crops (at least 4x ``size`` on a side) of the colour photos scikit-image and
    scikit-learn ship, area-downsampled to ``size``: averaging 16 or more source pixels into each
    one washes out whatever compression the source photo had.
    """
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(getattr(data, n)())[..., :3] for n in ("astronaut", "chelsea", "coffee", "rocket")]
    photos += [np.asarray(img) for img in load_sample_images().images]
    rng = np.random.default_rng(0)
    out = []
    for photo in photos:
        h, w = photo.shape[:2]
        for _ in range(crops):
            side = int(rng.integers(4 * size, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = np.ascontiguousarray(photo[y:y + side, x:x + side])
            out.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BOX)))
    return out


def distortion(args: argparse.Namespace) -> None:
    files = image_files(args.data)
    if not files:
        sys.exit(f"error: no images under {args.data}")
    photos = _reference_photos(args.size, args.crops)
    first = [psnr(p, jpeg_roundtrip(p, args.quality, args.subsampling, 0)) for p in photos]
    print(f"first generation, {len(photos)} compression-free {args.size}x{args.size} photo crops: "
          f"{psnr_summary(first)}")
    rng = np.random.default_rng(0)
    sample = [decode_file(files[i]) for i in rng.choice(len(files), size=min(args.samples, len(files)), replace=False)]
    for shift in sorted({0, args.shift}):
        scores = [psnr(rgb, jpeg_roundtrip(rgb, args.quality, args.subsampling, shift)) for rgb in sample]
        print(f"next generation of {len(sample)} images from {args.data}, grid shifted {shift} px: "
              f"{psnr_summary(scores)}")


def idx_to_folder(args: argparse.Namespace) -> None:
    from imgclf.data import read_idx_dataset

    dst = new_folder(args.dst)
    ds = read_idx_dataset(Path(args.src), "fashion-mnist")
    scores = []
    for split_name, split in ds.splits.items():
        assert split.images is not None
        for i, (img, label) in enumerate(zip(split.images[..., 0], split.labels, strict=True)):
            folder = dst / split_name / ds.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            if args.png:
                Image.fromarray(img, "L").save(buf, "PNG")
            else:
                Image.fromarray(img, "L").save(buf, "JPEG", quality=args.quality)
                scores.append(psnr(img, decode(buf.getvalue())[..., 0]))
            (folder / f"{i:05d}.{'png' if args.png else 'jpg'}").write_bytes(buf.getvalue())
    n = sum(len(s) for s in ds.splits.values())
    print(f"{n} images from {args.src} -> {dst} as " + ("PNG" if args.png else f"JPEG quality {args.quality}"))
    if scores:
        print(f"the JPEGs against the originals: {psnr_summary(scores)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("recompress", recompress), ("distortion", distortion)):
        s = sub.add_parser(name)
        s.set_defaults(fn=fn)
        s.add_argument("--quality", type=int, default=75)
        s.add_argument("--subsampling", choices=sorted(SUBSAMPLING), default="4:2:0")
        s.add_argument("--shift", type=int, default=3, help="block-grid shift of the new generation, pixels")
    rc = sub.choices["recompress"]
    rc.add_argument("src")
    rc.add_argument("dst")
    rc.add_argument("--workers", type=int, default=0)
    dc = sub.choices["distortion"]
    dc.add_argument("--data", required=True, help="an image folder (the dataset to compare with)")
    dc.add_argument("--size", type=int, default=32)
    dc.add_argument("--samples", type=int, default=2000)
    dc.add_argument("--crops", type=int, default=50, help="crops per reference photo")
    ic = sub.add_parser("idx-to-folder")
    ic.set_defaults(fn=idx_to_folder)
    ic.add_argument("src", help="a folder with train-images-idx3-ubyte[.gz] etc. (Fashion-MNIST)")
    ic.add_argument("dst")
    ic.add_argument("--quality", type=int, default=75)
    ic.add_argument("--png", action="store_true", help="write lossless PNGs instead of JPEGs")
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
