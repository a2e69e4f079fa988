"""The one decode path: every format, every mode, and every way an upload can be broken."""

from __future__ import annotations

import functools
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


# --- HEIC/HEIF and AVIF: the camera formats of phones -------------------------------------------

@functools.cache
def photo(w: int = 320, h: int = 200) -> np.ndarray:
    """The real chelsea photo at ``w`` x ``h`` (upscaled like a phone photo when big)."""
    from imgclf.samples import reference_photo

    return np.asarray(Image.fromarray(reference_photo()).resize((w, h), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_decode_close_to_source(fmt):
    arr = photo()
    out = decode(encode(Image.fromarray(arr), fmt, quality=95))
    assert out.shape == arr.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - arr).mean() < 6


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
@pytest.mark.parametrize("orientation, to_stored", [(6, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180),
                                                    (8, Image.Transpose.ROTATE_270)])
def test_heic_and_avif_rotated_exif_come_out_upright(fmt, orientation, to_stored):
    upright = photo(240, 160)
    stored = Image.fromarray(upright).transpose(to_stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode(encode(stored, fmt, quality=95, exif=exif.tobytes()))
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright).mean() < 6  # a wrong rotation would be ~50


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_obey_the_pixel_limit_and_hint(fmt):
    data = encode(Image.fromarray(photo(320, 200)), fmt, quality=80)
    with pytest.raises(ImageTooLargeError, match="MP"):
        decode(data, max_pixels=10_000)
    assert decode(data, min_side=50).shape == (100, 160, 3)  # integer box reduce by 200 // 100 = 2


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_truncated_heic_and_avif_are_typed_errors(fmt):
    data = encode(Image.fromarray(photo()), fmt, quality=80)
    for cut in (12, 40, len(data) // 3, len(data) - 10):
        with pytest.raises(ImageDecodeError):
            decode(data[:cut])


@pytest.mark.parametrize("magic, name", [(b"%PDF-1.4 x", "PDF"), (b"8BPS\x00\x01" + bytes(20), "PSD"),
                                         (b"<svg xmlns='x'/>", "SVG")])
def test_unsupported_formats_are_named(magic, name):
    with pytest.raises(UnsupportedImageError, match=name) as info:
        decode(magic)
    assert "HEIC" in str(info.value)  # and the message lists what is read


def test_decode_error_is_a_user_error():
    from imgclf.errors import UserError

    assert issubclass(ImageDecodeError, UserError) and issubclass(ImageDecodeError, ValueError)


# --- Scaled decode from a size hint -----------------------------------------------------------------

@pytest.mark.parametrize("size, min_side, expect", [
    ((4000, 3000), 512, (750, 1000)),    # 1/4: 3000/8 = 375 < 512 <= 750
    ((6000, 4000), 512, (1000, 1500)),   # 1/4
    ((4000, 3000), 300, (375, 500)),     # 1/8
    ((3000, 4000), 512, (1000, 750)),    # portrait: the short side decides, whatever the orientation
    ((900, 700), 512, (700, 900)),       # too small to scale: full decode
])
def test_jpeg_is_decoded_at_the_smallest_dct_scale_that_keeps_min_side(size, min_side, expect):
    data = encode(Image.fromarray(photo(*size)), "JPEG", quality=85)
    out = decode(data, min_side=min_side)
    assert out.shape[:2] == expect
    assert min(out.shape[:2]) >= min(min_side, min(size))


def test_scaled_jpeg_decode_is_close_to_a_shrunk_full_decode():
    data = encode(Image.fromarray(photo(4000, 3000)), "JPEG", quality=90)
    small = decode(data, min_side=512)
    full = np.asarray(Image.fromarray(decode(data)).resize(small.shape[1::-1], Image.Resampling.BOX))
    assert np.abs(small.astype(int) - full).mean() < 2


def test_non_jpeg_is_box_reduced_by_an_integer_factor():
    arr = photo(1200, 900)
    out = decode(encode(Image.fromarray(arr), "PNG"), min_side=128)  # 900 // (2 * 128) = 3
    assert out.shape == (300, 400, 3)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(arr).reduce(3)))


@pytest.mark.parametrize("fmt, size, min_side, reduced", [
    ("JPEG", (1600, 1200), 300, True),   # DCT scale 1/4
    ("PNG", (1200, 900), 128, True),     # box reduce by 3
    ("JPEG", (1600, 1200), None, False),  # no hint: full size
    ("JPEG", (640, 480), 300, False),    # too small to scale
    ("PNG", (600, 500), 200, False),     # 500 // 400 = 1: no reduce
])
def test_decode_scaled_says_whether_the_pixels_are_reduced(fmt, size, min_side, reduced):
    data = encode(Image.fromarray(photo(*size)), fmt)
    out = images.decode_scaled(data, min_side=min_side)
    assert out.reduced is reduced
    np.testing.assert_array_equal(out.pixels, decode(data, min_side=min_side))
    assert (out.pixels.shape[:2] == size[::-1]) is not reduced


@pytest.mark.parametrize("orientation, to_stored", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_after_scaled_decode(orientation, to_stored):
    upright = photo(2400, 1600)  # landscape, stored as portrait with a rotate tag
    stored = Image.fromarray(upright).transpose(to_stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode(encode(stored, "JPEG", quality=92, exif=exif.tobytes()), min_side=400)
    assert out.shape == (400, 600, 3)  # 1/4 scale, then upright
    expect = np.asarray(Image.fromarray(upright).reduce(4))
    assert np.abs(out.astype(int) - expect).mean() < 3


# --- Bounded cost and typed errors for any input ----------------------------------------------------

@pytest.mark.parametrize("w, h", [(8192, 1), (1, 65535), (40_000_000, 1)])
def test_extreme_aspect_ratios_are_refused_from_the_header(w, h):
    data = encode(Image.new("L", (w, h)), "PNG")
    with pytest.raises(ImageTooLargeError, match="aspect ratio") as info:
        decode(data)
    assert info.value.http_status == 422


def test_aspect_limit_is_configurable():
    data = encode(Image.new("RGB", (300, 2)), "PNG")
    assert decode(data, max_aspect_ratio=200).shape == (2, 300, 3)
    with pytest.raises(ImageTooLargeError):
        decode(data, max_aspect_ratio=100)


def gif_frames(n: int = 4) -> bytes:
    frames = [Image.fromarray(photo(64, 48)).quantize(64).rotate(30 * i) for i in range(n)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def test_every_truncation_of_an_animated_gif_is_a_typed_error_or_its_first_frame():
    data = gif_frames()
    first = decode(data)
    for cut in range(1, len(data), 7):
        try:
            out = decode(data[:cut])
        except ImageDecodeError:
            continue
        assert out.shape == first.shape


def test_malformed_tiff_is_a_typed_error():
    import struct

    # A little-endian TIFF whose ImageWidth tag has type 12 (double) with a bogus count: PIL's own
    # plugin raises TypeError/ValueError deep in tag handling.
    entries = [(256, 12, 5, 8), (257, 3, 1, 4), (258, 3, 1, 8), (262, 3, 1, 1), (273, 4, 1, 8), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    data = b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(64)
    with pytest.raises(ImageDecodeError):
        decode(data)


@pytest.mark.parametrize("exc", [IndexError("tile index"), TypeError("bad tag"), MemoryError(),
                                 RecursionError(), KeyError("MPO")])
def test_any_decoder_exception_becomes_a_typed_error(monkeypatch, exc):
    import struct

    from PIL import ImageFile

    data = encode(Image.fromarray(gradient()), "PNG")

    def boom(self):
        raise exc

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    with pytest.raises(ImageDecodeError) as info:
        decode(data)
    assert info.value.http_status == 422
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (_ for _ in ()).throw(struct.error("short")))
    with pytest.raises(CorruptImageError, match="short"):
        decode(data)


def test_jpeg_with_thousands_of_scans_is_refused_before_decoding():
    data = encode(Image.fromarray(photo(64, 48)), "JPEG", progressive=True)
    sos = data.index(b"\xff\xda")
    bloated = data[:sos] + b"\xff\xfe\x00\x04\xff\xda" * (images.MAX_JPEG_SCANS + 1) + data[sos:]
    with pytest.raises(CorruptImageError, match="scans"):
        decode(bloated)


def test_broken_exif_block_does_not_reject_the_image():
    arr = gradient()
    data = encode(Image.fromarray(arr), "PNG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    np.testing.assert_array_equal(decode(data), arr)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "F", "CMYK", "1"])
def test_box_reduce_before_conversion_equals_conversion_then_reduce(mode):
    """The hinted path reduces before converting the mode (no full-size copies); the pixels agree."""
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(np.tile(np.linspace(0, 65535, 600).astype(np.uint16), (400, 1)))
    elif mode == "F":
        img = Image.fromarray(rng.random((400, 600), dtype=np.float32) * 1000)
    elif mode in ("RGBA", "LA"):
        img = Image.fromarray(rng.integers(0, 256, (400, 600, 4), dtype=np.uint8), "RGBA").convert(mode)
    else:
        img = Image.fromarray(photo(600, 400)).convert(mode)
    data = encode(img, "TIFF")
    small = decode(data, min_side=50)  # 400 // (2 * 50) = 4
    expect = np.asarray(Image.fromarray(decode(data)).reduce(4))
    assert small.shape == expect.shape == (100, 150, 3)
    assert np.abs(small.astype(int) - expect).max() <= 2
