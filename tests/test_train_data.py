"""Training data: every dataset format, splits, the decode cache, batched augmentation."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from train_support import (
    CLASSES,
    class_images,
    write_cifar10,
    write_fashion_idx,
    write_idx,
    write_image_folder,
)

import imgclf.data.decode
from imgclf.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, decode_files, detect_format, read_cifar10
from imgclf.errors import UserError
from imgclf.preprocess import PreprocessSpec, normalize
from imgclf.train.data import (
    Augment,
    ImageTransform,
    TensorBatches,
    augment_batch,
    channel_stats,
    image_batches,
    load_training_data,
)

DEBIAN_FASHION = FASHION_MNIST_DIR


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python format
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tar_gz", [False, True], ids=["folder", "tar.gz"])
def test_cifar10_python_format(tmp_path, tar_gz):
    path = write_cifar10(tmp_path, n_train_per_class=5, n_test_per_class=3, tar_gz=tar_gz)
    assert detect_format(path) == "cifar10"
    data = load_training_data(path)
    assert data.classes == CLASSES
    assert data.train.images.shape == (20, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test is not None and len(data.test) == 12
    assert data.val is None and data.eval_split == "test"
    # Pixels are the R, G, B planes of each row, exactly as written.
    x, y = class_images(5, seed=1)
    np.testing.assert_array_equal(data.train.images.permute(0, 2, 3, 1).numpy(), x)
    np.testing.assert_array_equal(data.train.labels.numpy(), y)
    assert data.spec.input_size == 32 and data.spec.resize_mode == "squash" and not data.spec.grayscale


def test_cifar10_parent_folder_and_val_fraction(tmp_path):
    write_cifar10(tmp_path, n_train_per_class=10, n_test_per_class=2)
    data = load_training_data(tmp_path, val_fraction=0.2, seed=3)  # parent of cifar-10-batches-py
    assert len(data.train) == 32 and data.val is not None and len(data.val) == 8
    assert sorted(np.bincount(data.val.labels.numpy()).tolist()) == [2, 2, 2, 2]  # stratified
    assert data.eval_split == "val"


def test_cifar10_refuses_code_in_pickles(tmp_path):
    folder = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match="refusing to load"):
        load_training_data(folder)


def test_cifar10_missing_batches(tmp_path):
    (tmp_path / "data_batch_7").write_bytes(b"")
    with pytest.raises(UserError):
        read_cifar10(tmp_path)


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------


def test_folder_train_test(tmp_path):
    write_image_folder(tmp_path, {"train": 4, "test": 2})
    data = load_training_data(tmp_path, cache_dir=tmp_path / "cache")
    assert data.classes == CLASSES
    assert len(data.train) == 16 and data.test is not None and len(data.test) == 8 and data.val is None
    assert data.raw.splits["test"].files is not None  # kept for evaluation through the decode path


def test_folder_train_val_resized(tmp_path):
    write_image_folder(tmp_path, {"train": 3, "val": 2}, size=40)
    data = load_training_data(tmp_path, image_size=24, cache_dir=tmp_path / "cache")
    assert data.val is not None and data.test is None and data.eval_split == "val"
    assert data.train.images.shape[1:] == (3, 24, 24)
    assert data.raw.val_from == "val folder"
    with pytest.raises(UserError, match="own val split"):
        load_training_data(tmp_path, val_fraction=0.1, cache_dir=tmp_path / "cache")


def test_folder_single_level_split_is_seeded_and_stratified(tmp_path):
    write_image_folder(tmp_path, {"": 10})
    a = load_training_data(tmp_path, seed=1, cache_dir=tmp_path / "cache")
    b = load_training_data(tmp_path, seed=1, cache_dir=tmp_path / "cache")
    c = load_training_data(tmp_path, seed=2, cache_dir=tmp_path / "cache")
    assert a.val is not None and len(a.val) == 8 and len(a.train) == 32  # 20% by default
    assert np.bincount(a.val.labels.numpy()).tolist() == [2, 2, 2, 2]
    files = lambda d: [str(f) for f in d.raw.splits["val"].files]  # noqa: E731
    assert files(a) == files(b) and files(a) != files(c)
    assert torch.equal(a.val.images, b.val.images)


def test_folder_corrupt_files_are_reported_and_skipped(tmp_path, capsys):
    write_image_folder(tmp_path, {"train": 3, "test": 2})
    good = (tmp_path / "train" / "cat" / "0000.png").read_bytes()
    (tmp_path / "train" / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "train" / "bird" / "notes.jpg").write_bytes(b"this is not an image")
    (tmp_path / "train" / "bird" / "readme.txt").write_text("ignored: not an image suffix")
    data = load_training_data(tmp_path, cache_dir=tmp_path / "cache")
    assert len(data.train) == 12
    skipped = dict(data.raw.skipped)
    assert set(skipped) == {os.path.join("train", "cat", "truncated.png"), os.path.join("train", "bird", "notes.jpg")}
    assert "truncated" in skipped[os.path.join("train", "cat", "truncated.png")]
    # A cache hit reports the same files again.
    again = load_training_data(tmp_path, cache_dir=tmp_path / "cache")
    assert again.raw.skipped == data.raw.skipped


def test_folder_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "data", {"train": 2, "test": 1})
    cache = tmp_path / "cache"
    first = load_training_data(root, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(imgclf.data.decode, "decode_files", boom)
    second = load_training_data(root, cache_dir=cache)
    assert torch.equal(first.train.images, second.train.images)
    # Touching a file changes the key: the folder is decoded again.
    f = root / "train" / "cat" / "0000.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    with pytest.raises(AssertionError, match="decoded again"):
        load_training_data(root, cache_dir=cache)


def test_decode_pool_matches_inline(tmp_path):
    write_image_folder(tmp_path, {"": 300}, classes=4)  # 1,200 files: three chunks
    files = sorted(tmp_path.rglob("*.png"))
    spec = PreprocessSpec(input_size=16, crop_pct=1.0, resize_mode="squash")
    pooled, bad1 = decode_files(files, spec, workers=2)
    inline, bad2 = decode_files(files, spec, workers=1)
    assert not bad1 and not bad2
    np.testing.assert_array_equal(pooled, inline)


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no class folders"):
        load_training_data(tmp_path)
    write_image_folder(tmp_path, {"train": 1})
    (tmp_path / "test" / "zebra").mkdir(parents=True)
    with pytest.raises(UserError, match="zebra"):
        load_training_data(tmp_path)


# ---------------------------------------------------------------------------------------------
# IDX (Fashion-MNIST)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_fashion_idx(tmp_path, gz):
    root = write_fashion_idx(tmp_path / "fashion-mnist", gz=gz)
    assert detect_format(root) == "idx"
    data = load_training_data(root)
    assert data.classes == FASHION_MNIST_CLASSES
    assert data.spec.grayscale and data.spec.channels == 1 and data.spec.input_size == 28
    assert data.train.images.shape == (60, 1, 28, 28) and data.test is not None and len(data.test) == 30


def test_idx_rejects_bad_files(tmp_path):
    write_fashion_idx(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(UserError, match="do not pair up"):
        load_training_data(tmp_path)
    path.write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(UserError, match="not an IDX file"):
        load_training_data(tmp_path)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian():
    data = load_training_data(None, "fashion-mnist")
    assert len(data.train) == 60_000 and data.test is not None and len(data.test) == 10_000
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert np.bincount(data.train.labels.numpy()).tolist() == [6000] * 10
    # Fashion-MNIST's well-known statistics (pixel mean 0.2860, std 0.3530).
    assert data.spec.mean[0] == pytest.approx(0.2860, abs=1e-3)
    assert data.spec.std[0] == pytest.approx(0.3530, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# normalisation and augmentation
# ---------------------------------------------------------------------------------------------


def test_transform_normalises_exactly_like_preprocess():
    x, _ = class_images(4, seed=5)
    mean, std = channel_stats(torch.from_numpy(x).permute(0, 3, 1, 2))
    spec = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="squash", mean=mean, std=std)
    ours = ImageTransform(spec)(torch.from_numpy(x).permute(0, 3, 1, 2), torch.arange(len(x)), 0, torch.Generator())
    np.testing.assert_array_equal(ours.numpy(), normalize(x, spec))  # bit for bit


def test_channel_stats_match_numpy():
    x, _ = class_images(3, seed=6)
    mean, std = channel_stats(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(mean, (x / 255).mean(axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(std, (x / 255).std(axis=(0, 1, 2)), atol=1e-4)


def _candidates(img: torch.Tensor, p: int) -> list[torch.Tensor]:
    padded = F.pad(img[None].float(), (p, p, p, p), mode="reflect")[0]
    h, w = img.shape[-2:]
    crops = [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
    return crops + [c.flip(-1) for c in crops]


def test_translate_and_flip_are_reflect_crops():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = augment_batch(x, Augment(flip="random", translate=2), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    flipped = 0
    for i in range(len(x)):
        cands = _candidates(x[i], 2)
        match = [j for j, c in enumerate(cands) if torch.equal(c, out[i].float())]
        assert match, f"image {i} is not a reflect-padded crop"
        flipped += match[0] >= len(cands) // 2
    assert 0 < flipped < len(x)


def test_cutout_fills_one_square():
    x = torch.zeros(8, 3, 12, 12, dtype=torch.uint8)
    fill = torch.tensor([10, 20, 30], dtype=torch.uint8)
    out = augment_batch(x, Augment(cutout=4), torch.Generator().manual_seed(1), fill=fill)
    for i in range(8):
        mask = out[i, 0] == 10
        assert int(mask.sum()) == 16
        rows, cols = mask.nonzero().T
        assert int(rows.max() - rows.min()) == 3 and int(cols.max() - cols.min()) == 3
        assert torch.equal(out[i, 2][mask], torch.full((16,), 30, dtype=torch.uint8))


def test_alternating_flip_mirrors_every_other_epoch():
    spec = PreprocessSpec(input_size=8, crop_pct=1.0, resize_mode="squash", mean=(0.5,) * 3, std=(0.25,) * 3)
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    tf = ImageTransform(spec, Augment(flip="alternating"), num_images=32, seed=0)
    idx = torch.arange(32)
    e0 = tf(images, idx, 0, torch.Generator())
    e1 = tf(images, idx, 1, torch.Generator())
    e2 = tf(images, idx, 2, torch.Generator())
    torch.testing.assert_close(e1, e0.flip(-1))
    torch.testing.assert_close(e2, e0)
    plain = ImageTransform(spec)(images, idx, 0, torch.Generator())
    mirrored = [not torch.equal(e0[i], plain[i]) for i in range(32)]
    assert 0 < sum(mirrored) < 32


def test_batches_are_reproducible_and_resumable():
    x, y = class_images(10, seed=7)
    spec = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="squash")
    from imgclf.train.data import ImageSet

    ims = ImageSet(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y))
    batches = image_batches(ims, spec, batch_size=8, train=True, augment=Augment("random", 2, 4), seed=3)
    assert len(batches) == 5
    full = list(batches.batches(epoch=2))
    tail = list(batches.batches(epoch=2, start=3))
    assert len(full) == 5 and len(tail) == 2
    for (a, la), (b, lb) in zip(full[3:], tail, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    other = list(batches.batches(epoch=3))
    assert not torch.equal(full[0][1], other[0][1])  # a new shuffle every epoch


def test_shards_split_each_global_batch():
    inputs, labels = torch.arange(40).float()[:, None], torch.arange(40)
    whole = TensorBatches(inputs, labels, batch_size=8, shuffle=True, drop_last=True, seed=1)
    shards = [TensorBatches(inputs, labels, batch_size=8, shuffle=True, drop_last=True, seed=1).shard(r, 2)
              for r in range(2)]
    assert len(shards[0]) == len(whole) == 5
    for (_, g), (_, a), (_, b) in zip(whole.batches(0), shards[0].batches(0), shards[1].batches(0), strict=True):
        assert len(a) == len(b) == 4
        assert sorted(torch.cat([a, b]).tolist()) == sorted(g.tolist())
    with pytest.raises(UserError, match="divisible"):
        TensorBatches(inputs, labels, batch_size=9, drop_last=True).shard(0, 2)
    # Evaluation shards (no drop_last) cover every example exactly once.
    ev = [TensorBatches(inputs, labels, batch_size=8).shard(r, 3) for r in range(3)]
    seen = sorted(int(v) for e in ev for _, yb in e.batches(0) for v in yb)
    assert seen == list(range(40))
