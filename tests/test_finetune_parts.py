"""Fine-tuning building blocks: backbone/head split for every zoo family, augmentation on top of the
base preprocessing, the frozen-feature cache and the worst-classified grid."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from torch import nn

from imgclf import zoo
from imgclf.evaluation import save_worst_grid, worst_indices
from imgclf.finetune.backbone import FineTuneNet, find_classifier, split_model
from imgclf.finetune.features import cache_key, cached_features, weights_digest
from imgclf.finetune.stages import layerwise_groups
from imgclf.images import decode_file
from imgclf.preprocess import PreprocessSpec, caffe_spec, normalize, preprocess, resize_and_crop
from imgclf.samples import reference_photo
from imgclf.train.augment import PRESETS, Augment
from imgclf.train.data import ImageTransform

# One entry per family; the smallest input each one accepts keeps the test quick.
FAMILIES = {"efficientnet_lite0": 64, "mobilenet_v2": 64, "resnet50": 64, "squeezenet1_1": 64,
            "vgg16": 64, "inception_v3": 80, "xception": 80}


def _classifier_inputs(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_splits_into_backbone_head_and_ordered_groups(name):
    if name not in zoo.names():
        pytest.skip(f"{name} is not registered")
    entry = zoo.get(name)
    torch.manual_seed(0)
    model = zoo.build(name, pretrained=False)
    path = find_classifier(model, entry)
    expected_dim = _classifier_inputs(model.get_submodule(path))
    first_param = next(model.parameters())  # the stem: definition order is input order in every family
    split = split_model(model, entry, 3, input_size=FAMILIES[name], n_groups=4)

    assert split.feature_dim == expected_dim
    assert isinstance(split.head, nn.Linear) and split.head.out_features == 3
    assert isinstance(split.backbone.get_submodule(path), nn.Identity)
    # Every backbone parameter is in exactly one group; the stem is in the first one.
    grouped = [id(p) for g in split.groups for p in g]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in split.backbone.parameters()}
    assert any(p is first_param for p in split.groups[0])
    assert len(split.groups) == 4

    net = split.net.train()
    out = net(torch.randn(2, 3, FAMILIES[name], FAMILIES[name]))
    assert out.shape == (2, 3)  # no auxiliary outputs (Inception) in training mode
    bns = [m for m in net.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(not m.training for m in bns)  # BN stays in inference mode while the rest trains


def test_layerwise_rates_grow_toward_the_head():
    entry = zoo.get("efficientnet_lite0")
    split = split_model(zoo.build(entry.name, pretrained=False), entry, 2, input_size=64)
    groups = layerwise_groups(split, 0.5)
    scales = [g["lr_scale"] for g in groups]
    assert scales == [0.125, 0.25, 0.5, 1.0, 1.0]
    assert groups[-1]["name"] == "head"
    assert sum(len(g["params"]) for g in groups) == len(list(split.net.parameters()))


def test_frozen_bn_keeps_running_statistics():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net = FineTuneNet(backbone, nn.Linear(4, 2)).train()
    before = backbone[1].running_mean.clone()
    net(torch.randn(8, 3, 16, 16) * 5 + 3)
    assert torch.equal(backbone[1].running_mean, before)


# -- augmentation -----------------------------------------------------------------------------

LITE = zoo.get("efficientnet_lite0").preprocess.with_size(96)


def _pixels(spec: PreprocessSpec) -> torch.Tensor:
    return torch.from_numpy(resize_and_crop(reference_photo(), spec).copy()).permute(2, 0, 1)[None].contiguous()


@pytest.mark.parametrize("spec", [LITE, caffe_spec(64), PreprocessSpec(input_size=48)], ids=["lite", "caffe-bgr", "imagenet"])
def test_validation_transform_is_the_serving_preprocessing(spec):
    x = ImageTransform(spec)(_pixels(spec))[0].numpy()
    np.testing.assert_allclose(x, preprocess(reference_photo(), spec), rtol=0, atol=1e-5)


def test_flip_only_preset_mirrors_exactly():
    flip = Augment(flip="random", flip_p=1.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    px = _pixels(LITE)
    got = ImageTransform(LITE, flip)(px, generator=torch.Generator().manual_seed(0))[0].numpy()
    want = normalize(px[0].permute(1, 2, 0).numpy()[:, ::-1], LITE)
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize("name", ["light", "default", "strong"])
def test_presets_are_seeded_random_and_in_range(name):
    preset = PRESETS[name]
    px = _pixels(LITE).repeat(4, 1, 1, 1)
    tf = ImageTransform(LITE, preset)
    a = tf(px, generator=torch.Generator().manual_seed(1))
    b = tf(px, generator=torch.Generator().manual_seed(1))
    c = tf(px, generator=torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 96, 96) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # every image of a batch gets its own draw
    lo, hi = (0 - 127) / 128, (255 - 127) / 128  # the lite spec's range for 0..255 pixels
    assert a.min() >= lo - 1e-5 and a.max() <= hi + 1e-5


# -- feature cache ------------------------------------------------------------------------------


def _tiny_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_feature_cache_is_written_then_used_and_keyed_on_its_inputs(tmp_path, monkeypatch):
    spec = PreprocessSpec(input_size=32)
    files = []
    for i in range(5):
        f = tmp_path / f"img{i}.jpg"
        f.write_bytes(b"x" * (i + 1))  # only the fingerprint (path, size, mtime) matters to the key
        files.append(f)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    backbone = _tiny_backbone()
    first = cached_features(backbone, images, files, spec, architecture="tiny", cache_dir=tmp_path / "c")
    assert not first.hit and first.path.is_file() and first.features.shape == (5, 6)

    import imgclf.finetune.features as features

    def no_compute(*a, **k):
        raise AssertionError("features recomputed despite a valid cache")

    monkeypatch.setattr(features, "extract", no_compute)
    second = cached_features(backbone, images, files, spec, architecture="tiny", cache_dir=tmp_path / "c")
    assert second.hit and torch.equal(second.features, first.features)
    # Another split of the same files (another order) finds the same cache, rows in its own order.
    shuffled = cached_features(backbone, images.flip(0), files[::-1], spec, architecture="tiny",
                               cache_dir=tmp_path / "c")
    assert shuffled.hit and torch.equal(shuffled.features, first.features.flip(0))

    key = cache_key(architecture="tiny", weights=weights_digest(backbone), spec=spec, files=files)
    assert key != cache_key(architecture="tiny", weights=weights_digest(backbone), spec=spec.with_size(40), files=files)
    assert key != cache_key(architecture="tiny", weights=weights_digest(backbone), spec=spec, files=files[:4])
    other = _tiny_backbone()
    with torch.no_grad():
        other[0].weight.add_(0.01)
    assert weights_digest(other) != weights_digest(backbone)
    time.sleep(0.01)
    files[0].write_bytes(b"changed")
    os.utime(files[0])
    assert key != cache_key(architecture="tiny", weights=weights_digest(backbone), spec=spec, files=files)


def test_damaged_cache_file_is_recomputed(tmp_path):
    spec = PreprocessSpec(input_size=32)
    f = tmp_path / "a.jpg"
    f.write_bytes(b"1")
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    fs = cached_features(_tiny_backbone(), images, [f], spec, architecture="tiny", cache_dir=tmp_path)
    fs.path.write_bytes(b"not an npz")
    again = cached_features(_tiny_backbone(), images, [f], spec, architecture="tiny", cache_dir=tmp_path)
    assert not again.hit and torch.allclose(again.features, fs.features)


def test_features_match_the_eval_mode_backbone():
    spec = PreprocessSpec(input_size=32)
    backbone = _tiny_backbone()
    with torch.no_grad():
        backbone[1].running_mean.uniform_(-1, 1)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    from imgclf.finetune.features import extract

    got = extract(backbone.train(), images, ImageTransform(spec))
    with torch.no_grad():
        want = backbone.eval()(ImageTransform(spec)(images))
    torch.testing.assert_close(got, want)


# -- worst-classified grid ---------------------------------------------------------------------


def test_worst_indices_lists_misclassified_lowest_true_probability_first():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.45, 0.55]], np.float32)
    targets = np.array([0, 0, 0, 1])
    assert worst_indices(probs, targets, 10) == [2, 1]
    assert worst_indices(probs, targets, 1) == [2]
    assert worst_indices(probs[:1], targets[:1], 5) == []


def test_worst_grid_png(tmp_path):
    from PIL import Image

    files = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        f = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 50, 3), colour, np.uint8)).save(f)
        files.append(f)
    probs = np.array([[0.1, 0.9], [0.3, 0.7], [0.8, 0.2]], np.float32)
    n = save_worst_grid(tmp_path / "worst.png", files, probs, np.array([0, 0, 0]), ["a", "b"],
                        PreprocessSpec(input_size=32))
    assert n == 2
    grid = decode_file(tmp_path / "worst.png")
    assert grid.shape[0] > 100 and grid.shape[1] > 200
    n = save_worst_grid(tmp_path / "none.png", files, probs, np.array([1, 1, 0]), ["a", "b"],
                        PreprocessSpec(input_size=32))
    assert n == 0 and decode_file(tmp_path / "none.png").shape[2] == 3


def test_augment_settings_are_checked():
    with pytest.raises(ValueError, match="replaces translate and cutout"):
        Augment(crop_scale=(0.5, 1.0), translate=2)
    with pytest.raises(ValueError, match="crop_scale"):
        Augment(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="probability"):
        Augment(flip="random", flip_p=1.5)
    assert not Augment().active and Augment(brightness=0.1).active and PRESETS["none"] is None
