"""The one decode path: image bytes in, RGB uint8 array out.

Every image that enters imgclf (CLI, HTTP upload, dataset file) goes through :func:`decode`.
Nothing else in the project calls ``PIL.Image.open``.

The cost of any input is bounded before pixels are decoded (see docs/images.md): the header's
size is checked against a pixel limit and an aspect-ratio limit, JPEGs with absurd scan counts
are refused, only the first frame of an animation is read, and every exception a decoder raises
becomes an :class:`ImageDecodeError`. With a size hint (``min_side``) a big JPEG is decoded at
1/2, 1/4 or 1/8 scale by libjpeg's scaled DCT and any big image is box-reduced by an integer
factor, so a 24 MP phone photo costs a tenth of its full decode.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pillow_heif
from PIL import Image, ImageFile, UnidentifiedImageError, features

from imgclf.errors import UserError

# HEIC/HEIF (iPhone photos) through libheif; AVIF is built into Pillow (>= 11.3 wheels).
pillow_heif.register_heif_opener()


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number") from None


# Accept up to 40 megapixels by default; IMGCLF_MAX_PIXELS overrides it process-wide.
DEFAULT_MAX_PIXELS = int(_env_number("IMGCLF_MAX_PIXELS", 40_000_000))
# Long side / short side. Panoramas and long screenshots stay well under 100; an 8192x1 "image"
# is an attack or an accident, and refusing it costs nothing.
DEFAULT_MAX_ASPECT_RATIO = _env_number("IMGCLF_MAX_ASPECT_RATIO", 100.0)
# A progressive JPEG has ~10 scans; thousands of empty ones make libjpeg loop over the image again
# and again (a known denial of service). Counting SOS markers over-counts (thumbnails), never under.
MAX_JPEG_SCANS = int(_env_number("IMGCLF_MAX_JPEG_SCANS", 1000))

# Formats we decode. Nothing else is even tried (Image.open(formats=...)): exotic decoders are the
# usual home of parser bugs and none of them hold photos people classify.
# (A multi-picture JPEG from a phone opens through the JPEG plugin with format "MPO".)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF"

# Magic bytes of formats people send that we do not read, so the error can name them.
_OTHER_FORMATS = (
    (b"%PDF", "PDF"), (b"8BPS", "PSD (Photoshop)"), (b"\x00\x00\x01\x00", "ICO"), (b"%!PS", "PostScript/EPS"),
    (b"<svg", "SVG"), (b"<?xml", "XML/SVG"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (b"qoif", "QOI"), (b"DDS ", "DDS"),
    (b"P1", "PBM"), (b"P2", "PGM"), (b"P3", "PPM"), (b"P4", "PBM"), (b"P5", "PGM"), (b"P6", "PPM"),
)

# We enforce our own limit below; PIL's global one would otherwise only warn at 89 MP.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

# EXIF orientation -> the transpose that makes the stored pixels upright (as ImageOps.exif_transpose).
_ORIENTATION: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageDecodeError(UserError, ValueError):
    """An input that is not a usable image. ``code`` is stable and machine readable."""

    code = "invalid_image"
    http_status = 422


class EmptyImageError(ImageDecodeError):
    code = "empty_image"


class UnsupportedImageError(ImageDecodeError):
    code = "unsupported_format"
    http_status = 415


class CorruptImageError(ImageDecodeError):
    code = "corrupt_image"


class ImageTooLargeError(ImageDecodeError):
    code = "image_too_large"


def check_size(w: int, h: int, max_pixels: int, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> None:
    """Refuse, from the header alone, a size that would cost too much to decode or preprocess."""
    if w <= 0 or h <= 0:
        raise EmptyImageError(f"image has zero size ({w}x{h})")
    if max_pixels and w * h > max_pixels:
        raise ImageTooLargeError(
            f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:g} MP "
            "(a possible decompression bomb); resize it or raise the limit (IMGCLF_MAX_PIXELS)"
        )
    if max_aspect_ratio and max(w, h) > max_aspect_ratio * min(w, h):
        raise ImageTooLargeError(
            f"image is {w}x{h}, an aspect ratio over {max_aspect_ratio:g}:1; crop it or raise the limit "
            "(IMGCLF_MAX_ASPECT_RATIO)"
        )


_REDUCIBLE_MODES = frozenset({"RGB", "RGBA", "L", "LA", "CMYK", "I", "F"})
# 16/32-bit grey: scaled to 8 bits over their range, not clipped at 255.
_WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _WIDE_GREY_MODES:
        return _grey_to_rgb(img, _grey_top(img))
    # L, 1, CMYK, YCbCr, LAB, HSV ...
    return img.convert("RGB")


def _grey_top(img: Image.Image) -> float:
    """The white of a 16/32-bit grey image: 65535 for 16-bit, else its brightest pixel (no copy made)."""
    if img.mode.startswith("I;16"):
        return 65535.0
    top = float(img.getextrema()[1])  # type: ignore[arg-type]
    return max(top, 1.0) if math.isfinite(top) else 255.0


def _grey_to_rgb(img: Image.Image, top: float) -> Image.Image:
    """16/32-bit grey: scale 0..top to 8 bits instead of clipping at 255."""
    arr = np.array(img, dtype=np.float32)  # one writable copy (4 B/px), then in place
    arr *= np.float32(255.0 / top)
    np.nan_to_num(arr, copy=False)
    np.clip(arr, 0, 255, out=arr)
    grey = np.rint(arr, out=arr).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag, 1 when absent or unreadable (a broken EXIF block is not a broken image)."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if value in _ORIENTATION else 1
    except Exception:
        return 1


def draft_scale(short_side: int, min_side: int | None) -> int:
    """The largest libjpeg DCT scale (1, 2, 4 or 8) that keeps the short side at least ``min_side``."""
    if not min_side:
        return 1
    for s in (8, 4, 2):
        if -(-short_side // s) >= min_side:
            return s
    return 1


def _unsupported(data: bytes) -> UnsupportedImageError:
    head = data[:16].lstrip()
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return UnsupportedImageError(f"{name} images are not supported; use {FORMAT_NAMES}")
    if data[4:12] == b"ftypavif" and not features.check("avif"):
        return UnsupportedImageError("AVIF images need Pillow built with libavif (pip install -U pillow)")
    return UnsupportedImageError(f"not an image format imgclf reads ({FORMAT_NAMES})")


def _decode(data: bytes, max_pixels: int, max_aspect_ratio: float, min_side: int | None) -> tuple[Image.Image, bool]:
    """The upright RGB image, and whether it came out smaller than stored (``min_side`` let it)."""
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise _unsupported(data) from None
    w, h = img.size
    check_size(w, h, max_pixels, max_aspect_ratio)
    if img.format in ("JPEG", "MPO"):
        if data.count(b"\xff\xda") > MAX_JPEG_SCANS:
            raise CorruptImageError(f"JPEG with more than {MAX_JPEG_SCANS} scans (a decoding-cost attack)")
        scale = draft_scale(min(w, h), min_side)
        if scale > 1:  # libjpeg decodes straight at 1/scale: ~scale^2 less work and memory
            img.draft(None, (w // scale, h // scale))
    img.load()  # first frame only: animations are never walked (n_frames reads the whole file)
    rgb = _upright_rgb(img, min_side)
    return rgb, min(rgb.size) < min(w, h)


def _upright_rgb(img: Image.Image, min_side: int | None) -> Image.Image:
    """A loaded image -> RGB, box-reduced for ``min_side`` and turned upright by its EXIF orientation."""
    orientation = _orientation(img)
    pixels: Image.Image = img
    if min_side:
        # A box filter is a cruder prefilter than DCT scaling (measured: it moves predictions twice as
        # much at the same size), so it keeps twice the margin; it still takes a 24 MP PNG down 2x.
        # Reduced before the mode conversion, so the full-size image is never copied (premultiplied
        # alpha keeps the compositing on white exact); palettes cannot be averaged, they go first.
        factor = min(img.size) // (2 * min_side)
        if factor >= 2:
            if img.mode in _WIDE_GREY_MODES:  # the range of the full image
                top = _grey_top(img)  # reduce has no 16-bit path: average those as 32-bit
                pixels = _grey_to_rgb((img if img.mode in ("I", "F") else img.convert("I")).reduce(factor), top)
            else:
                pixels = (img if img.mode in _REDUCIBLE_MODES else _to_rgb(img)).reduce(factor)
    rgb = _to_rgb(pixels)
    if orientation in _ORIENTATION:  # orientation swaps axes; the short side (the hint) does not change
        rgb = rgb.transpose(_ORIENTATION[orientation])
    return rgb


class ScaledImage(NamedTuple):
    """What :func:`decode_scaled` returns."""

    pixels: npt.NDArray[np.uint8]
    # Decoded smaller than stored (DCT scale or box reduce): these are not the full-size pixels, so an
    # exact resize of them is no more exact than the cheapest resize with the same filter and centres.
    reduced: bool


def decode(data: bytes, *, max_pixels: int | None = None, min_side: int | None = None,
           max_aspect_ratio: float | None = None) -> npt.NDArray[np.uint8]:
    """Decode encoded image bytes into an ``(H, W, 3)`` RGB uint8 array.

    Applies EXIF orientation, takes the first frame of animations and converts every mode to RGB.
    ``min_side``: the caller will shrink the image anyway, so it may come back smaller (JPEG decoded at
    1/2, 1/4 or 1/8 scale, keeping the shorter side at least ``min_side``; any format box-reduced by an
    integer factor, keeping it at least ``2 * min_side``); without it
    the image is decoded at full size. Raises a subclass of :class:`ImageDecodeError` with a message
    a user can act on, whatever the bytes are.
    """
    return decode_scaled(data, max_pixels=max_pixels, min_side=min_side, max_aspect_ratio=max_aspect_ratio).pixels


def decode_scaled(data: bytes, *, min_side: int | None, max_pixels: int | None = None,
                  max_aspect_ratio: float | None = None) -> ScaledImage:
    """:func:`decode`, also saying whether ``min_side`` let the image come back smaller than stored."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    aspect = DEFAULT_MAX_ASPECT_RATIO if max_aspect_ratio is None else max_aspect_ratio
    if not data:
        raise EmptyImageError("empty input: the file has no bytes")
    reduced = False

    def convert() -> Image.Image:
        nonlocal reduced
        rgb, reduced = _decode(data, limit, aspect, min_side)
        return rgb

    pixels = _rgb_array(convert)
    return ScaledImage(pixels, reduced)


def image_to_rgb(img: Image.Image, *, max_pixels: int | None = None,
                 max_aspect_ratio: float | None = None) -> npt.NDArray[np.uint8]:
    """An already-open PIL image (its current frame) -> ``(H, W, 3)`` RGB uint8 array: the size limits,
    mode conversion and EXIF orientation of :func:`decode`, without encoding it again."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    aspect = DEFAULT_MAX_ASPECT_RATIO if max_aspect_ratio is None else max_aspect_ratio

    def convert() -> Image.Image:
        check_size(*img.size, limit, aspect)
        img.load()
        return _upright_rgb(img, None)

    return _rgb_array(convert)


def _rgb_array(make_rgb: Callable[[], Image.Image]) -> npt.NDArray[np.uint8]:
    """Run a decode step; any failure of the decoders becomes an :class:`ImageDecodeError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(make_rgb(), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageTooLargeError("not enough memory to decode this image; send a smaller one") from None
    except Exception as exc:  # any decoder failure is the file's fault, never a server error
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg or "broken data stream" in msg or isinstance(exc, EOFError):
            raise CorruptImageError(f"image data is truncated or damaged ({msg}); re-export the file") from None
        raise CorruptImageError(f"cannot decode image ({type(exc).__name__}: {msg[:200]})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise CorruptImageError(f"decoded to an unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def decode_file(path: str | os.PathLike[str], *, max_pixels: int | None = None,
                min_side: int | None = None) -> npt.NDArray[np.uint8]:
    """Read a file and :func:`decode` it. A missing or unreadable file raises ``OSError``."""
    return decode(Path(path).read_bytes(), max_pixels=max_pixels, min_side=min_side)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif",
                            ".heic", ".heif", ".hif", ".avif"})


def is_image_path(path: Path) -> bool:
    """True for a file whose suffix names a format we read (used to walk folders)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``folder``, at any depth, sorted."""
    return sorted(f for f in Path(folder).rglob("*") if f.is_file() and is_image_path(f))
