"""Seed files, mutations and the oracle for fuzzing the decode path (tests and benchmarks/fuzz_decode.py).

The seeds are the real sample photos encoded in every format :func:`imgclf.images.decode` reads
(JPEG baseline and progressive, PNG, GIF with several frames, WebP, TIFF, BMP, HEIC). A mutation
truncates a file, flips bytes, or rewrites a header field (width, height, frame count) with an
extreme value, which is what found the 500s and the multi-GB allocations of the past.
"""

from __future__ import annotations

import io
import random
import struct

import numpy as np
from PIL import Image

# Extreme values for header fields: zero, one, powers of two around int16/uint16/int32 limits.
EXTREMES = (0, 1, 2, 255, 256, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1)


def seed_files(photo: np.ndarray, side: int = 96) -> dict[str, bytes]:
    """One small file per format (and variant) from a real photo: name -> bytes."""
    h, w = photo.shape[:2]
    img = Image.fromarray(photo).resize((side, max(1, side * h // w)), Image.Resampling.BILINEAR)
    frames = [img.rotate(20 * i).quantize(32) for i in range(3)]

    def enc(im: Image.Image, fmt: str, **kw: object) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "jpeg": enc(img, "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg-progressive": enc(img, "JPEG", quality=80, progressive=True),
        "png": enc(img, "PNG"),
        "png-rgba": enc(img.convert("RGBA"), "PNG"),
        "gif-animated": enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
        "webp": enc(img, "WEBP", quality=70),
        "webp-animated": enc(img, "WEBP", save_all=True, append_images=[img.rotate(30)], duration=40),
        "tiff": enc(img, "TIFF"),
        "tiff-deflate": enc(img, "TIFF", compression="tiff_adobe_deflate"),
        "bmp": enc(img, "BMP"),
        "heic": enc(img, "HEIF", quality=60),
    }


def _header_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the size and frame fields of a file's header, where we know them."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        fields = [(16, ">I"), (20, ">I")]
        actl = data.find(b"acTL")
        return fields + ([(actl + 4, ">I")] if actl > 0 else [])
    if data[:3] == b"GIF":
        fields = [(6, "<H"), (8, "<H")]
        desc = data.find(b"\x2c", 13)
        return fields + ([(desc + 5, "<H"), (desc + 7, "<H")] if desc > 0 else [])
    if data[:2] == b"BM":
        return [(18, "<i"), (22, "<i"), (28, "<H")]
    if data[:2] == b"\xff\xd8":
        sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
        return [(sof + 5, ">H"), (sof + 7, ">H")] if sof > 0 else []
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        end = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack(end + "I", data[4:8])[0]
        out = []
        if ifd + 2 <= len(data):
            for i in range(min(struct.unpack(end + "H", data[ifd:ifd + 2])[0], 64)):
                entry = ifd + 2 + 12 * i
                out.append((entry + 8, end + "I"))   # every tag's value: widths, offsets, counts ...
                out.append((entry + 4, end + "I"))   # ... and its count
        return out
    if data[8:12] == b"WEBP":
        return [(26, "<H"), (28, "<H"), (24, "<I")]
    ispe = data.find(b"ispe")
    if ispe > 0:
        return [(ispe + 8, ">I"), (ispe + 12, ">I")]
    return []


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage: truncation, byte flips, a header field set to an extreme, or a mix."""
    kind = rng.randrange(4)
    out = bytearray(data)
    if kind in (0, 3):
        fields = _header_fields(data)
        if fields:
            for _ in range(rng.randint(1, 2)):
                offset, fmt = rng.choice(fields)
                size = struct.calcsize(fmt)
                if 0 <= offset and offset + size <= len(out):
                    value = rng.choice(EXTREMES) % (1 << (8 * size))
                    if fmt[-1].islower() and value >= 1 << (8 * size - 1):
                        value -= 1 << (8 * size)
                    out[offset:offset + size] = struct.pack(fmt, value)
    if kind in (1, 3):
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    if kind == 2 or (kind == 3 and rng.random() < 0.5):
        out = out[: rng.randrange(1, len(out))]
    return bytes(out)


def check(data: bytes, *, max_pixels: int | None = None) -> str:
    """Decode ``data`` and return the outcome's name; raise AssertionError on anything but a clean
    image within the bounds or an :class:`ImageDecodeError` (what would be a 500 in the server)."""
    from imgclf.images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, ImageDecodeError, decode

    try:
        out = decode(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return type(exc).__name__
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    h, w = out.shape[:2]
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, out.shape
    assert 0 < h * w <= limit and max(h, w) <= DEFAULT_MAX_ASPECT_RATIO * min(h, w), out.shape
    return "decoded"


def save_regression(data: bytes, folder: str) -> str:
    """Keep a crashing input forever (named by its hash, so saving twice is harmless)."""
    import hashlib
    from pathlib import Path

    path = Path(folder) / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)
