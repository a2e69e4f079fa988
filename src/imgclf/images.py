"""The one decode path: image bytes in, RGB uint8 array out.

Every image that enters imgclf (CLI, HTTP upload, dataset file) goes through :func:`decode`.
Nothing else in the project calls ``PIL.Image.open``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Accept up to 40 megapixels by default; IMGCLF_MAX_PIXELS overrides it process-wide.
DEFAULT_MAX_PIXELS = int(os.environ.get("IMGCLF_MAX_PIXELS", 40_000_000))

# Formats we decode. Anything else PIL might recognise (EPS, PSD, ...) is refused, because
# exotic decoders are the usual home of parser bugs and none of them hold photos people classify.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})

# We enforce our own limit below; PIL's global one would otherwise only warn at 89 MP.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
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


def _check_size(img: Image.Image, max_pixels: int) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise EmptyImageError(f"image has zero size ({w}x{h})")
    if max_pixels and w * h > max_pixels:
        raise ImageTooLargeError(
            f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:.0f} MP "
            "(a possible decompression bomb); resize it or raise the limit (IMGCLF_MAX_PIXELS)"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grey: scale the full range to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        grey = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV ...
    return img.convert("RGB")


def decode(data: bytes, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes into an ``(H, W, 3)`` RGB uint8 array.

    Applies EXIF orientation, takes the first frame of animations and converts every mode to RGB.
    Raises a subclass of :class:`ImageDecodeError` with a message a user can act on.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise EmptyImageError("empty input: the file has no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedImageError(
            "not an image format imgclf reads (JPEG, PNG, WebP, GIF, BMP, TIFF)"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(f"cannot read image header: {exc}") from None
    with img:
        if img.format not in SUPPORTED_FORMATS:
            raise UnsupportedImageError(
                f"{img.format} images are not supported; use JPEG, PNG, WebP, GIF, BMP or TIFF"
            )
        _check_size(img, limit)
        try:
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            _check_size(img, limit)
            rgb = _to_rgb(img)
            arr = np.asarray(rgb, dtype=np.uint8)
        except ImageDecodeError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            msg = str(exc) or type(exc).__name__
            if "truncated" in msg or "broken data stream" in msg or isinstance(exc, EOFError):
                raise CorruptImageError(f"image data is truncated or damaged ({msg}); re-export the file") from None
            raise CorruptImageError(f"cannot decode image: {msg}") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise CorruptImageError(f"decoded to an unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def decode_file(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Read a file and :func:`decode` it. A missing or unreadable file raises ``OSError``."""
    return decode(Path(path).read_bytes(), max_pixels=max_pixels)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif"})


def is_image_path(path: Path) -> bool:
    """True for a file whose suffix names a format we read (used to walk folders)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``folder``, at any depth, sorted."""
    return sorted(f for f in Path(folder).rglob("*") if f.is_file() and is_image_path(f))
