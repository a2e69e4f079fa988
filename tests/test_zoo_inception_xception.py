"""Inception v3 (torchvision layout) and Xception (timm legacy_xception layout) zoo entries."""

from __future__ import annotations

import pytest
import torch

from imgclf import zoo
from imgclf.publish import publish
from imgclf.zoo.labels import imagenet_labels
from imgclf.zoo.loading import count_params

BN = ("weight", "bias", "running_mean", "running_var")


def _conv_bn(prefix: str, cout: int, cin: int, kh: int, kw: int) -> dict[str, tuple[int, ...]]:
    """torchvision's BasicConv2d: ``<prefix>.conv.weight`` (no bias) and ``<prefix>.bn.*``."""
    sig = {f"{prefix}.conv.weight": (cout, cin, kh, kw)}
    sig.update({f"{prefix}.bn.{p}": (cout,) for p in BN})
    return sig


def inception_v3_signature() -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``inception_v3_google-0cc3c7bd.pth``, written out from
    torchvision's Inception3 definition (branch names, widths and kernel shapes)."""
    s: dict[str, tuple[int, ...]] = {}
    s |= _conv_bn("Conv2d_1a_3x3", 32, 3, 3, 3)
    s |= _conv_bn("Conv2d_2a_3x3", 32, 32, 3, 3)
    s |= _conv_bn("Conv2d_2b_3x3", 64, 32, 3, 3)
    s |= _conv_bn("Conv2d_3b_1x1", 80, 64, 1, 1)
    s |= _conv_bn("Conv2d_4a_3x3", 192, 80, 3, 3)
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        s |= _conv_bn(f"{name}.branch1x1", 64, cin, 1, 1)
        s |= _conv_bn(f"{name}.branch5x5_1", 48, cin, 1, 1)
        s |= _conv_bn(f"{name}.branch5x5_2", 64, 48, 5, 5)
        s |= _conv_bn(f"{name}.branch3x3dbl_1", 64, cin, 1, 1)
        s |= _conv_bn(f"{name}.branch3x3dbl_2", 96, 64, 3, 3)
        s |= _conv_bn(f"{name}.branch3x3dbl_3", 96, 96, 3, 3)
        s |= _conv_bn(f"{name}.branch_pool", pool, cin, 1, 1)
    s |= _conv_bn("Mixed_6a.branch3x3", 384, 288, 3, 3)
    s |= _conv_bn("Mixed_6a.branch3x3dbl_1", 64, 288, 1, 1)
    s |= _conv_bn("Mixed_6a.branch3x3dbl_2", 96, 64, 3, 3)
    s |= _conv_bn("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        s |= _conv_bn(f"{name}.branch1x1", 192, 768, 1, 1)
        s |= _conv_bn(f"{name}.branch7x7_1", c, 768, 1, 1)
        s |= _conv_bn(f"{name}.branch7x7_2", c, c, 1, 7)
        s |= _conv_bn(f"{name}.branch7x7_3", 192, c, 7, 1)
        s |= _conv_bn(f"{name}.branch7x7dbl_1", c, 768, 1, 1)
        s |= _conv_bn(f"{name}.branch7x7dbl_2", c, c, 7, 1)
        s |= _conv_bn(f"{name}.branch7x7dbl_3", c, c, 1, 7)
        s |= _conv_bn(f"{name}.branch7x7dbl_4", c, c, 7, 1)
        s |= _conv_bn(f"{name}.branch7x7dbl_5", 192, c, 1, 7)
        s |= _conv_bn(f"{name}.branch_pool", 192, 768, 1, 1)
    s |= _conv_bn("AuxLogits.conv0", 128, 768, 1, 1)
    s |= _conv_bn("AuxLogits.conv1", 768, 128, 5, 5)
    s |= {"AuxLogits.fc.weight": (1000, 768), "AuxLogits.fc.bias": (1000,)}
    s |= _conv_bn("Mixed_7a.branch3x3_1", 192, 768, 1, 1)
    s |= _conv_bn("Mixed_7a.branch3x3_2", 320, 192, 3, 3)
    s |= _conv_bn("Mixed_7a.branch7x7x3_1", 192, 768, 1, 1)
    s |= _conv_bn("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    s |= _conv_bn("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
    s |= _conv_bn("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        s |= _conv_bn(f"{name}.branch1x1", 320, cin, 1, 1)
        s |= _conv_bn(f"{name}.branch3x3_1", 384, cin, 1, 1)
        s |= _conv_bn(f"{name}.branch3x3_2a", 384, 384, 1, 3)
        s |= _conv_bn(f"{name}.branch3x3_2b", 384, 384, 3, 1)
        s |= _conv_bn(f"{name}.branch3x3dbl_1", 448, cin, 1, 1)
        s |= _conv_bn(f"{name}.branch3x3dbl_2", 384, 448, 3, 3)
        s |= _conv_bn(f"{name}.branch3x3dbl_3a", 384, 384, 1, 3)
        s |= _conv_bn(f"{name}.branch3x3dbl_3b", 384, 384, 3, 1)
        s |= _conv_bn(f"{name}.branch_pool", 192, cin, 1, 1)
    s |= {"fc.weight": (1000, 2048), "fc.bias": (1000,)}
    return s


def xception_signature() -> dict[str, tuple[int, ...]]:
    """Key -> shape of timm's ``legacy_xception`` checkpoint (``xception-43020ad28.pth``).

    Inside ``blockN.rep`` every separable conv sits at an index that counts the parameter-free
    ReLU before it (dropped in block1, which starts without ReLU); BN follows at index + 1.
    """
    s: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        s.update({f"{prefix}.{p}": (c,) for p in BN})

    def sep(prefix: str, cin: int, cout: int) -> None:
        s[f"{prefix}.conv1.weight"] = (cin, 1, 3, 3)
        s[f"{prefix}.pointwise.weight"] = (cout, cin, 1, 1)

    s["conv1.weight"] = (32, 3, 3, 3)
    bn("bn1", 32)
    s["conv2.weight"] = (64, 32, 3, 3)
    bn("bn2", 64)
    # block: (skip in/out or None, [(rep index of separable conv, cin, cout), ...])
    blocks = {
        1: ((64, 128), [(0, 64, 128), (3, 128, 128)]),
        2: ((128, 256), [(1, 128, 256), (4, 256, 256)]),
        3: ((256, 728), [(1, 256, 728), (4, 728, 728)]),
        **{i: (None, [(1, 728, 728), (4, 728, 728), (7, 728, 728)]) for i in range(4, 12)},
        12: ((728, 1024), [(1, 728, 728), (4, 728, 1024)]),
    }
    for i, (skip, convs) in blocks.items():
        if skip:
            s[f"block{i}.skip.weight"] = (skip[1], skip[0], 1, 1)
            bn(f"block{i}.skipbn", skip[1])
        for idx, cin, cout in convs:
            sep(f"block{i}.rep.{idx}", cin, cout)
            bn(f"block{i}.rep.{idx + 1}", cout)
    sep("conv3", 1024, 1536)
    bn("bn3", 1536)
    sep("conv4", 1536, 2048)
    bn("bn4", 2048)
    s["fc.weight"], s["fc.bias"] = (1000, 2048), (1000,)
    return s


SIGNATURES = {"inception_v3": inception_v3_signature, "xception": xception_signature}
PARAMS = {"inception_v3": 27_161_264, "xception": 22_855_952}


@pytest.fixture(scope="module")
def models():
    """Each model built once per module, on first use."""
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = zoo.build(name, pretrained=False)
        return cache[name].eval()

    return get


@pytest.fixture(params=list(SIGNATURES))
def built(request, models):
    return request.param, models(request.param)


def _weights_only(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_state_dict_matches_official_layout(built):
    name, model = built
    got = {k: tuple(v.shape) for k, v in _weights_only(model.state_dict()).items()}
    want = SIGNATURES[name]()
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert got == want


def test_parameter_count_is_official(built):
    name, model = built
    assert count_params(model) == PARAMS[name] == zoo.get(name).num_params


def test_official_checkpoint_file_loads_through_the_zoo(built, tmp_path):
    """A ``.pth`` with exactly the official keys and shapes (no ``num_batches_tracked``, like the
    published files) loads strictly via ``zoo.build(weights=...)`` and sets every tensor."""
    name, _ = built
    gen = torch.Generator().manual_seed(3)
    state = {}
    for k, shape in SIGNATURES[name]().items():
        t = torch.empty(shape).uniform_(-0.05, 0.05, generator=gen)
        state[k] = t.abs() + 0.5 if k.endswith("running_var") else t
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    model = zoo.build(name, weights=str(path))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_missing_key_is_an_error(built, tmp_path):
    from imgclf.zoo.weights import WeightsError

    name, model = built
    state = _weights_only(model.state_dict())
    state.pop("fc.bias")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="1 missing keys"):
        zoo.build(name, weights=str(tmp_path / "bad.pth"))


def test_forward_at_native_size_gives_logits_only_in_eval(built):
    name, model = built
    assert zoo.get(name).preprocess.input_size == 299
    with torch.inference_mode():
        out = model.eval()(torch.randn(2, 3, 299, 299))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


def test_inception_training_mode_adds_aux_logits(models):
    model = models("inception_v3")
    model.train()
    try:
        with torch.no_grad():
            logits, aux = model(torch.randn(2, 3, 299, 299))
    finally:
        model.eval()
    assert logits.shape == aux.shape == (2, 1000)


def test_inception_transform_input_maps_imagenet_normalisation_to_minus_one_one(models):
    """torchvision's transform_input=True: the ImageNet-normalised tensor for pixels p is turned
    into (p - 0.5) / 0.5 before the first conv, exactly."""
    model = models("inception_v3")
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 299, 299, generator=gen)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        with_transform = model((pixels - mean) / std)
        model.transform_input = False
        try:
            plain = model((pixels - 0.5) / 0.5)
        finally:
            model.transform_input = True
    torch.testing.assert_close(with_transform, plain, rtol=1e-4, atol=1e-4 * float(plain.abs().max()))
    assert "input_scale" not in model.state_dict()  # buffers are not part of the weights


def test_preprocessing_specs_match_official_configs():
    inc = zoo.get("inception_v3").preprocess  # torchvision: resize 342, crop 299, bilinear, ImageNet stats
    assert (inc.input_size, inc.resize_size, inc.interpolation) == (299, 342, "bilinear")
    assert inc.mean == (0.485, 0.456, 0.406) and inc.std == (0.229, 0.224, 0.225)
    xc = zoo.get("xception").preprocess  # timm: crop_pct 0.8975 -> resize 333, bicubic, mean = std = 0.5
    assert (xc.input_size, xc.resize_size, xc.interpolation, xc.crop_pct) == (299, 333, "bicubic", 0.8975)
    assert xc.mean == (0.5, 0.5, 0.5) and xc.std == (0.5, 0.5, 0.5)


def test_weight_sources():
    inc, xc = zoo.get("inception_v3").weights, zoo.get("xception").weights
    assert inc.url == "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
    assert inc.hash_prefix == "0cc3c7bd"
    assert xc.url == ("https://github.com/rwightman/pytorch-image-models/releases/download/"
                      "v0.1-cadene/xception-43020ad28.pth")
    assert xc.hash_prefix is None  # the hex tag in this file name is not a documented sha256 prefix


@pytest.mark.slow
def test_exports_to_onnx_matching_torch(built, tmp_path):
    """Random-init model -> package; publish itself fails unless ONNX Runtime matches torch
    on a real photo (relative tolerance 1e-3, same top-1)."""
    name, model = built
    spec = zoo.get(name).preprocess
    report = publish(model, tmp_path / name, name=name, labels=list(imagenet_labels()), spec=spec)
    assert report.check.top1_onnx == report.check.top1_torch
    assert report.package.spec == spec
    assert report.package.onnx_path.stat().st_size > 80e6  # float32 weights: ~4 bytes per parameter
