"""Real weights on real photos: the shipped zoo models must see the cat and the espresso, through
``imgclf predict`` with the zoo name (torch) and through an exported package (ONNX Runtime)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from imgclf import zoo
from imgclf.cli import main

CAT = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian Mau
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug
SHIPPED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"]
# The default model is quick; the rest are marked slow but stay in the suite.
MODELS = [pytest.param(m, marks=[] if m == "efficientnet_lite0" else pytest.mark.slow) for m in SHIPPED]


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def predict_json(model: str, files) -> dict[str, list[dict]]:
    code, out = run_cli("predict", "--model", model, "--json", "--no-progress", *map(str, files))
    assert code == 0, out
    return {r["file"]: r["predictions"] for r in json.loads(out)}


@pytest.fixture(scope="module")
def photos(sample_jpegs):
    return [sample_jpegs["chelsea"], sample_jpegs["coffee"]]


@pytest.fixture(scope="module")
def zoo_predictions(photos):
    """One CLI run per model, shared by the tests below."""
    cache: dict[str, dict[str, list[dict]]] = {}

    def get(model: str) -> dict[str, list[dict]]:
        if model not in cache:
            cache[model] = predict_json(model, photos)
        return cache[model]

    return get


@pytest.mark.parametrize("model", MODELS)
def test_zoo_model_sees_the_cat_and_the_espresso(model, photos, zoo_predictions):
    preds = zoo_predictions(model)
    chelsea, coffee = (preds[str(p)] for p in photos)
    assert chelsea[0]["index"] in CAT, chelsea
    assert coffee[0]["index"] in COFFEE, coffee
    assert len(chelsea) == 5 and all(q["label"] for q in chelsea)
    # Scores are probabilities, best first.
    scores = [q["score"] for q in chelsea]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("model", SHIPPED)
def test_exported_package_gives_the_same_top5(model, photos, zoo_predictions, tmp_path):
    out_dir = tmp_path / model
    code, out = run_cli("export", model, "--out", str(out_dir), "--offline")
    assert code == 0 and "same top-1 class" in out
    meta = json.loads((out_dir / "model.json").read_text())
    assert meta["name"] == model and len(meta["labels"]) == 1000
    assert meta["preprocess"] == zoo.get(model).preprocess.to_dict()
    weights_license = zoo.get(model).weights.license
    assert weights_license and meta["provenance"]["weights_license"] == weights_license
    from_package = predict_json(str(out_dir), photos)
    from_zoo = zoo_predictions(model)
    for p in photos:
        assert [q["index"] for q in from_package[str(p)]] == [q["index"] for q in from_zoo[str(p)]]
        for a, b in zip(from_package[str(p)], from_zoo[str(p)], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
