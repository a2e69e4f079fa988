"""The preprocessing spec: geometry, normalisation, channel order, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.preprocess import (
    CAFFE_BGR_MEAN,
    PreprocessSpec,
    caffe_spec,
    preprocess,
    preprocess_batch,
    resize_and_crop,
)


def test_default_is_the_imagenet_eval_transform():
    spec = PreprocessSpec()
    assert spec.input_size == 224 and spec.resize_size == 256


def test_shorter_side_resize_then_centre_crop_keeps_the_centre():
    # 300x600 landscape: shorter side -> 256, so 512x256, centre 224 crop.
    img = np.zeros((300, 600, 3), np.uint8)
    img[:, 290:310] = 255  # a white vertical stripe in the middle
    out = resize_and_crop(img, PreprocessSpec(interpolation="nearest"))
    assert out.shape == (224, 224, 3)
    white_cols = np.where(out[112, :, 0] > 128)[0]
    assert abs(white_cols.mean() - 111.5) < 2  # still centred
    assert 16 <= len(white_cols) <= 19  # 20 px * 256/300 = 17


def test_squash_resizes_whole_image():
    img = np.zeros((100, 50, 3), np.uint8)
    img[:50] = 255  # top half white
    out = resize_and_crop(img, PreprocessSpec(input_size=32, resize_mode="squash", interpolation="nearest"))
    assert out.shape == (32, 32, 3)
    assert out[:16].min() == 255 and out[16:].max() == 0


def test_normalisation_values():
    img = np.full((8, 8, 3), [255, 0, 128], np.uint8)
    spec = PreprocessSpec(input_size=8, crop_pct=1.0, resize_mode="squash")
    x = preprocess(img, spec)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    expect = (np.array([1.0, 0.0, 128 / 255]) - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(x[:, 0, 0], expect, rtol=1e-6)


def test_caffe_bgr_mean_subtraction():
    img = np.full((4, 4, 3), [10, 20, 30], np.uint8)  # R, G, B
    x = preprocess(img, caffe_spec(4))
    np.testing.assert_allclose(x[:, 0, 0], np.array([30, 20, 10]) - np.array(CAFFE_BGR_MEAN), rtol=1e-6)


def test_grayscale_spec_gives_one_channel():
    img = np.full((10, 10, 3), 200, np.uint8)
    spec = PreprocessSpec(input_size=10, resize_mode="squash", grayscale=True, mean=(0.5,), std=(0.25,))
    x = preprocess(img, spec)
    assert x.shape == (1, 10, 10)
    np.testing.assert_allclose(x[0, 0, 0], (200 / 255 - 0.5) / 0.25, rtol=1e-5)


def test_batch_equals_single():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 70), (90, 40)]]
    spec = PreprocessSpec(input_size=32)
    batch = preprocess_batch(imgs, spec)
    assert batch.shape == (2, 3, 32, 32)
    for i, im in enumerate(imgs):
        np.testing.assert_array_equal(batch[i], preprocess(im, spec))


def test_dict_round_trip():
    spec = PreprocessSpec(input_size=299, crop_pct=0.8975, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert PreprocessSpec.from_dict(caffe_spec().to_dict()) == caffe_spec()


@pytest.mark.parametrize("kw", [
    {"input_size": 0}, {"crop_pct": 0}, {"crop_pct": 1.5}, {"resize_mode": "stretch"},
    {"interpolation": "cubic"}, {"mean": (0.1, 0.2)}, {"std": (0, 1, 1)}, {"channel_order": "RBG"},
])
def test_invalid_specs_are_rejected(kw):
    with pytest.raises(ValueError):
        PreprocessSpec(**kw)


def test_unknown_fields_rejected():
    with pytest.raises(ValueError, match="unknown"):
        PreprocessSpec.from_dict({"input_size": 10, "colour": "red"})


# --- torchvision's eval transform, pixel for pixel --------------------------------------------------

def torchvision_eval_reference(img: np.ndarray, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    """``Resize(resize) + CenterCrop(crop)`` on a PIL image, written from torchvision's documented algorithm.

    Resize(int): the smaller edge becomes ``resize``; the other is ``int(resize * long / short)``
    (``_compute_resized_output_size``: truncated, not rounded); the image is returned as is when the
    size does not change; PIL's filter of that name (bilinear by default). CenterCrop: ``top = int(round((h - crop) / 2.0))``.
    """
    from PIL import Image

    pil = Image.fromarray(img)
    w, h = pil.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        pil = pil.resize((new_w, new_h), Image.Resampling[interpolation.upper()])
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return np.asarray(pil.crop((left, top, left + crop, top + crop)))


def real_photo_shapes() -> dict[str, np.ndarray]:
    """The real photos, their transposes and a few off-by-some crops: 20 shapes."""
    from imgclf.samples import sample_photos

    out = {}
    for name, arr in sample_photos().items():
        out[name] = arr
        out[f"{name}-portrait"] = np.ascontiguousarray(arr.transpose(1, 0, 2))
        out[f"{name}-crop"] = np.ascontiguousarray(arr[3:-4, 5:])
        out[f"{name}-crop-portrait"] = np.ascontiguousarray(arr[7:, 2:-9].transpose(1, 0, 2))
    return out


@pytest.mark.parametrize("crop, resize", [(224, 256), (299, 342)])
def test_resize_and_crop_is_torchvision_eval_pixel_for_pixel(crop, resize):
    spec = PreprocessSpec(input_size=crop, crop_pct=crop / resize, interpolation="bilinear")
    assert spec.resize_size == resize
    photos = real_photo_shapes()
    rounding_differs = 0
    for name, arr in photos.items():
        np.testing.assert_array_equal(resize_and_crop(arr, spec), torchvision_eval_reference(arr, resize, crop),
                                      err_msg=name)
        short, long = sorted(arr.shape[:2])
        rounding_differs += round(resize * long / short) != int(resize * long / short)
    assert rounding_differs >= 3  # the set does hold photos where rounding the long side moved the crop


@pytest.mark.parametrize("crop, resize", [(224, 256), (299, 342)])
def test_zoo_torchvision_entries_match_the_reference_through_a_full_decode(crop, resize, tmp_path):
    """PNG bytes (decoded at full size) through the one pipeline: the reference, exactly."""
    import io

    from PIL import Image

    from imgclf.pipeline import load_pixels

    spec = PreprocessSpec(input_size=crop, crop_pct=crop / resize)
    for name, arr in real_photo_shapes().items():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        np.testing.assert_array_equal(load_pixels(buf.getvalue(), spec), torchvision_eval_reference(arr, resize, crop),
                                      err_msg=name)


@pytest.mark.slow
def test_every_shorter_side_zoo_entry_is_the_torchvision_transform():
    """Each zoo entry that resizes the shorter side, with its own sizes and filter."""
    zoo = pytest.importorskip("imgclf.zoo")
    photos = {k: v for k, v in real_photo_shapes().items() if "crop" not in k}
    checked = 0
    for name in zoo.names():
        spec = zoo.get(name).preprocess
        if spec.resize_mode != "shorter":
            continue
        checked += 1
        for photo, arr in photos.items():
            ref = torchvision_eval_reference(arr, spec.resize_size, spec.input_size, spec.interpolation)
            np.testing.assert_array_equal(resize_and_crop(arr, spec), ref, err_msg=f"{name} {photo}")
    assert checked >= 5


# --- bounded cost for any shape ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 8192), (65535, 1), (1, 400_000), (3, 5000), (1, 40_000_000)])
def test_extreme_shapes_have_a_bounded_intermediate(shape):
    """An 8192x1 image would resize to 2,097,152x256 (1.6 GB); only the crop's window is resized."""
    img = np.zeros((*shape, 3), np.uint8)
    img[..., 0] = 200
    for spec in (PreprocessSpec(), caffe_spec(224)):  # no OverflowError, no 2M-pixel-wide intermediate
        out = resize_and_crop(img, spec)
        assert out.shape == (224, 224, 3)
        assert out[..., 0].min() == 200 and out[..., 1].max() == 0


@pytest.mark.parametrize("shape", [(1500, 2000), (2000, 1500), (1000, 1000)])
def test_window_resize_of_a_reduced_image_is_the_exact_resize_within_a_level(shape):
    """``exact=False`` resizes only the crop's window: same filter and centres, rounding within one level."""
    from PIL import Image

    from imgclf.samples import reference_photo

    big = np.asarray(Image.fromarray(reference_photo()).resize(shape[::-1], Image.Resampling.BICUBIC))
    for spec in (PreprocessSpec(), PreprocessSpec(interpolation="bicubic"), caffe_spec(224)):
        exact = resize_and_crop(big, spec)
        window = resize_and_crop(big, spec, exact=False)
        assert window.shape == exact.shape
        diff = np.abs(window.astype(int) - exact)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_pipeline_resizes_a_reduced_decode_by_its_window_and_a_full_one_exactly():
    import io

    from PIL import Image

    from imgclf.images import decode
    from imgclf.pipeline import load_pixels
    from imgclf.preprocess import decode_min_side
    from imgclf.samples import reference_photo

    spec = PreprocessSpec()
    buf = io.BytesIO()
    Image.fromarray(reference_photo()).resize((3200, 2400)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    small = decode(data, min_side=decode_min_side(spec))
    assert small.shape[:2] == (1200, 1600)  # the decoder reduced it
    np.testing.assert_array_equal(load_pixels(data, spec), resize_and_crop(small, spec, exact=False))
    assert not np.array_equal(resize_and_crop(small, spec, exact=False), resize_and_crop(small, spec))


def test_long_but_normal_images_keep_the_exact_path():
    """A 10:1 panorama is under the intermediate bound, so it is still torchvision's transform."""
    from imgclf.samples import reference_photo

    pano = np.tile(reference_photo()[:60], (1, 3, 1))[:, :600]
    spec = PreprocessSpec()
    np.testing.assert_array_equal(resize_and_crop(pano, spec), torchvision_eval_reference(pano, 256, 224))


def test_decode_hint_keeps_an_antialiasing_margin():
    from imgclf.preprocess import DECODE_MARGIN, decode_min_side

    assert decode_min_side(PreprocessSpec()) == DECODE_MARGIN * 256
    assert decode_min_side(PreprocessSpec(input_size=299, crop_pct=299 / 342)) == DECODE_MARGIN * 342
    assert decode_min_side(caffe_spec(224)) == DECODE_MARGIN * 224
