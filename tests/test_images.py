"""The one decode path: every format, every mode, and every way an upload can be broken."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf import images
from imgclf.images import (
    CorruptImageError,
    EmptyImageError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode,
)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 48, h: int = 32) -> np.ndarray:
    """A picture with distinct rows, columns and channels, so rotations and swaps are visible."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_round_trip_exactly(fmt):
    arr = gradient()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode(encode(Image.fromarray(arr), fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_jpeg_decodes_close_to_source():
    arr = gradient()
    out = decode(encode(Image.fromarray(arr), "JPEG", quality=95))
    assert out.shape == arr.shape
    assert np.abs(out.astype(int) - arr).mean() < 3


def test_gif_takes_first_frame_of_animation():
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    out = decode(data)
    assert out.shape == (16, 16, 3)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


# Orientation tag -> the transform that, applied to the upright picture, gives what the camera stored.
@pytest.mark.parametrize("orientation, to_stored", [
    (2, Image.Transpose.FLIP_LEFT_RIGHT),
    (3, Image.Transpose.ROTATE_180),
    (5, Image.Transpose.TRANSPOSE),
    (6, Image.Transpose.ROTATE_90),
    (8, Image.Transpose.ROTATE_270),
])
def test_exif_orientation_is_applied(orientation, to_stored):
    upright = gradient(40, 24)
    stored = Image.fromarray(upright).transpose(to_stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode(encode(stored, "PNG", exif=exif.tobytes()))
    assert out.shape == upright.shape
    np.testing.assert_array_equal(out, upright)


def test_grayscale_becomes_three_equal_channels():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
    out = decode(encode(grey, "PNG"))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], np.asarray(grey))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgba_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255          # red ...
    rgba[:2, :, 3] = 255        # ... opaque in the top half
    rgba[2:, :, 3] = 0          # ... fully transparent below
    out = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])


def test_la_mode_half_transparent_blends_with_white():
    la = Image.merge("LA", [Image.new("L", (2, 2), 0), Image.new("L", (2, 2), 128)])
    out = decode(encode(la, "PNG"))
    assert abs(int(out[0, 0, 0]) - 127) <= 1


def test_palette_with_transparency():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    p.putpixel((0, 0), 1)
    data = encode(p, "PNG", transparency=1)
    out = decode(data)
    np.testing.assert_array_equal(out[1, 1], [0, 255, 0])
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])


def test_cmyk_jpeg_is_converted():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = decode(encode(cmyk, "JPEG", quality=95))
    assert out.shape == (8, 8, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_16bit_png_keeps_its_range():
    arr16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    img = Image.fromarray(arr16)
    assert img.mode.startswith("I;16")
    out = decode(encode(img, "PNG"))
    assert out.shape == (4, 4, 3)
    assert out[0, 0, 0] == 0 and out[3, 3, 0] == 255
    assert 100 < out[1, 3, 0] < 160  # mid-range stays mid-range, not clipped to white


def test_empty_input():
    with pytest.raises(EmptyImageError, match="empty"):
        decode(b"")


def test_non_image_bytes_are_unsupported():
    with pytest.raises(UnsupportedImageError) as info:
        decode(b"%PDF-1.4 definitely not an image")
    assert info.value.http_status == 415


def test_truncated_jpeg_is_corrupt():
    data = encode(Image.fromarray(gradient(200, 200)), "JPEG")
    with pytest.raises(CorruptImageError, match="truncated"):
        decode(data[: len(data) // 2])


def test_truncated_png_is_corrupt():
    data = encode(Image.fromarray(gradient(64, 64)), "PNG")
    with pytest.raises(ImageDecodeError):
        decode(data[:100])


def test_decompression_bomb_rejected_before_decoding():
    # 8000x6000 = 48 MP, over the 40 MP default: rejected from the header, before any pixel is decoded.
    big = Image.new("L", (8000, 6000))
    data = encode(big, "PNG", optimize=False)
    with pytest.raises(ImageTooLargeError, match="MP") as info:
        decode(data)
    assert info.value.http_status == 422


def test_pixel_limit_is_configurable():
    data = encode(Image.fromarray(gradient(100, 100)), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode(data, max_pixels=5_000)
    assert decode(data, max_pixels=10_000).shape == (100, 100, 3)


def test_zero_size_image_header():
    # Hand-made BMP header with width 0.
    import struct

    header = b"BM" + struct.pack("<IHHI", 58, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 0, 1, 1, 24, 0, 4, 2835, 2835, 0, 0)
    with pytest.raises(ImageDecodeError):
        decode(header + info + b"\x00\x00\x00\x00")


def test_unsupported_but_pil_readable_format_is_refused():
    data = encode(Image.new("RGB", (4, 4)), "PPM")
    with pytest.raises(UnsupportedImageError, match="PPM"):
        decode(data)


def test_decode_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        images.decode_file(tmp_path / "nope.jpg")


def test_nothing_else_opens_images():
    """The decode path is the only caller of PIL.Image.open in the package."""
    from pathlib import Path

    src = Path(images.__file__).parent
    offenders = [p for p in src.rglob("*.py") if "Image.open(" in p.read_text() and p.name != "images.py"]
    assert offenders == []
