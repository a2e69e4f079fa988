"""Evaluating a model package needs no torch: imgclf.data, imgclf.evaluation and the server import
and work in a process where torch cannot be imported, and give the answers of an in-process run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from serve_support import TINY_LABELS, build_tiny_package

from imgclf.data import open_dataset
from imgclf.engine import OnnxEngine
from imgclf.evaluation import evaluate_engine
from imgclf.package import load_package
from imgclf.samples import write_sample_photos

# Runs first in the child: every later ``import torch`` (direct or inside a library) fails.
BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")


@pytest.fixture(scope="module")
def package_and_folder(tmp_path_factory):
    base = tmp_path_factory.mktemp("torchfree")
    pkg = build_tiny_package(base / "tiny")
    photos = sorted(write_sample_photos(base / "photos"))
    folder = base / "data"
    for split in ("train", "test"):
        for i, photo in enumerate(photos):
            target = folder / split / TINY_LABELS[i % len(TINY_LABELS)]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target / photo.name)
    (folder / "test" / TINY_LABELS[0] / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    return pkg, folder


def _run_without_torch(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_child_really_cannot_import_torch():
    r = _run_without_torch("import torch")
    assert r.returncode != 0 and "torch is blocked" in r.stderr


def test_evaluate_package_on_a_folder_without_torch(package_and_folder, tmp_path):
    pkg, folder = package_and_folder
    code = f"""
        import json, sys
        import imgclf.data, imgclf.evaluation, imgclf.server, imgclf.server.app
        from imgclf.data import open_dataset
        from imgclf.engine import OnnxEngine
        from imgclf.evaluation import evaluate_engine, write_evaluation
        from imgclf.package import load_package

        engine = OnnxEngine(load_package({str(pkg)!r}))
        ev = evaluate_engine(engine, open_dataset({str(folder)!r}), "test", progress=False)
        write_evaluation(ev, {str(tmp_path / "eval")!r})
        assert not [m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] == "torch"]
        print(json.dumps(ev.to_dict()))
    """
    r = _run_without_torch(code)
    assert r.returncode == 0, r.stderr
    child = json.loads(r.stdout.strip().splitlines()[-1])
    # The same evaluation in this process (where torch is loaded) gives the same figures.
    here = evaluate_engine(OnnxEngine(load_package(pkg)), open_dataset(folder), "test", progress=False).to_dict()
    assert child == here
    n_photos = len(list((folder / "train").rglob("*.jpg")))
    assert child["n"] == n_photos and sum(c["support"] for c in child["per_class"]) == n_photos
    assert child["errors"] == [[f"test/{TINY_LABELS[0]}/broken.jpg", child["errors"][0][1]]]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == child
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0


def test_evaluate_command_and_server_without_torch(package_and_folder, tmp_path):
    pkg, folder = package_and_folder
    photo = sorted((folder / "train").rglob("*.jpg"))[0]
    code = f"""
        import json
        from fastapi.testclient import TestClient
        from imgclf.cli import main
        from imgclf.server import ServerConfig, create_app

        assert main(["evaluate", {str(pkg)!r}, "--data", {str(folder)!r}, "--out", {str(tmp_path / "ev")!r},
                     "--no-progress"]) == 0
        config = ServerConfig(models=({str(pkg)!r},), load_in_background=False)
        with TestClient(create_app(config)) as client:
            with open({str(photo)!r}, "rb") as f:
                r = client.post("/v1/models/tiny/predict?top_k=3", files={{"file": ("p.jpg", f.read(), "image/jpeg")}})
        assert r.status_code == 200, r.text
        print(json.dumps(r.json()))
    """
    r = _run_without_torch(code)
    assert r.returncode == 0, r.stderr
    served = json.loads(r.stdout.strip().splitlines()[-1])["predictions"][0]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == len(list((folder / "train").rglob("*.jpg")))
    # The server's answer for one file is the evaluation's: same decode, same spec, same engine.
    from imgclf.pipeline import prepare

    engine = OnnxEngine(load_package(pkg))
    probs = engine.probabilities(prepare(photo.read_bytes(), engine.spec)[None])[0]
    best = int(probs.argmax())
    assert served[0]["label"] == TINY_LABELS[best]
    assert served[0]["score"] == pytest.approx(float(probs[best]), abs=1e-5)
