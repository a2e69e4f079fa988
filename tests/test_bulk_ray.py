"""Bulk prediction on Ray (``imgclf predict --ray``): sources, the decode and engine stages, result
parts and resume, and the same answers as ``imgclf predict --json`` on a local Ray instance.

The tests that need Ray share one local instance (2 CPUs) per module and are marked slow.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from imgclf.bulk import job as bulk_job
from imgclf.bulk.decode import decode_batch
from imgclf.bulk.job import BulkOptions, predict_bulk
from imgclf.bulk.output import OutputError, ResultStore
from imgclf.bulk.predictor import Predictor
from imgclf.bulk.shipping import pack, unpack
from imgclf.bulk.sources import SourceError, list_sources
from imgclf.cli import main
from imgclf.package import load_package

CAT = set(range(281, 286))


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not ray_available(), reason="Ray is not installed (pip install 'imgclf[ray]')")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module (ray.init costs seconds)."""
    if not ray_available():
        pytest.skip("Ray is not installed (pip install 'imgclf[ray]')")
    from imgclf.bulk.cluster import connected

    with connected(None, num_cpus=2) as ray:
        yield ray


@pytest.fixture
def photos(tmp_path, sample_jpegs) -> Path:
    """A folder: the five sample photos in a subfolder, a corrupt JPEG and a text file (not an image)."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name, path in sample_jpegs.items():
        (root / "sub" / f"{name}.jpg").write_bytes(path.read_bytes())
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def tiny(serve_model_dir) -> Path:
    return serve_model_dir / "tiny"


def read_rows(out: Path) -> list[dict]:
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text().splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


# --- sources -----------------------------------------------------------------------------------------


def test_folder_is_listed_recursively_images_only_as_absolute_paths(photos):
    found = list_sources([str(photos)])
    assert found == sorted(found) and all(Path(p).is_absolute() for p in found)
    assert {Path(p).name for p in found} == {"corrupt.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "china.jpg",
                                             "flower.jpg"}


def test_glob_manifests_and_duplicates(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(photos)
    assert list_sources(["sub/c*.jpg"]) == [str(photos / "sub" / n) for n in ("chelsea.jpg", "china.jpg", "coffee.jpg")]
    assert len(list_sources([str(photos / "**" / "*.jpg")])) == 6
    # A .txt manifest: comments and blank lines skipped, relative paths from the manifest's folder.
    (photos / "list.txt").write_text("# two photos\nsub/chelsea.jpg\n\n  sub/coffee.jpg  \nmissing.jpg\n")
    assert list_sources([str(photos / "list.txt")]) == [str(photos / "sub/chelsea.jpg"), str(photos / "sub/coffee.jpg"),
                                                        str(photos / "missing.jpg")]
    with (tmp_path / "list.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path"])
        w.writerows([[1, str(photos / "sub/rocket.jpg")], [2, str(photos / "sub/rocket.jpg")]])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["photos/sub/china.jpg"]}), tmp_path / "list.parquet")
    # Duplicates (within and across sources) are answered once, the first one in place.
    assert list_sources([str(tmp_path / "list.csv"), str(tmp_path / "list.parquet"), "sub/rocket.jpg"]) == [
        str(photos / "sub/rocket.jpg"), str(photos / "sub/china.jpg")]


def test_a_missing_file_stays_but_an_empty_source_is_an_error(photos, tmp_path):
    assert list_sources([str(tmp_path / "gone.jpg")]) == [str(tmp_path / "gone.jpg")]
    with pytest.raises(SourceError, match="matches no image files"):
        list_sources([str(photos / "*.png")])
    with pytest.raises(SourceError, match="manifest .* not found"):
        list_sources([str(tmp_path / "nope.txt")])
    (tmp_path / "nopath.csv").write_text("file\na.jpg\n")
    with pytest.raises(SourceError, match="no 'path' column"):
        list_sources([str(tmp_path / "nopath.csv")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no image files found"):
        list_sources([str(empty)])


def test_a_file_uri_folder_is_listed_through_pyarrow(photos):
    found = list_sources([f"file://{photos}/sub/"])
    assert found == [f"file://{photos}/sub/{n}.jpg" for n in ("chelsea", "china", "coffee", "flower", "rocket")]


# --- the stages, without Ray -------------------------------------------------------------------------


def test_decode_stage_gives_predicts_messages_and_the_predictor_its_answers(lite0_package, photos, tmp_path, capsys):
    package = load_package(lite0_package)
    files = [str(photos / "sub/chelsea.jpg"), str(photos / "corrupt.jpg"), str(tmp_path / "missing.jpg"),
             f"file://{photos}/sub/coffee.jpg", str(photos)]
    decoded = decode_batch({"path": np.array(files, dtype=object)}, package.spec)
    assert decoded["pixels"].shape == (5, 224, 224, 3) and decoded["pixels"].dtype == np.uint8
    assert main(["predict", "--json", "--model", str(lite0_package), *files[:3], str(photos)]) == 1
    expected = {r["file"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(decoded["error"][1:3]) == [expected[files[1]]["error"], "no such file"]
    assert decoded["error"][4] == "is a directory"
    out = Predictor(pack(lite0_package), k=3, threads=1)(decoded)
    assert out["indices"].shape == (5, 3) and out["indices"][0][0] in CAT
    assert (out["indices"][1:3] == -1).all() and (out["indices"][4] == -1).all()
    assert [p["index"] for p in expected[files[0]]["predictions"][:3]] == list(out["indices"][0])


def test_the_package_travels_as_files_and_is_unpacked_once_per_node(tiny, tmp_path):
    files = pack(tiny)
    assert set(files.files) == {"model.json", "model.onnx"}
    first = unpack(files, tmp_path / "node")
    assert load_package(first).meta == load_package(tiny).meta  # the hash recorded in model.json verifies
    (first / "marker").write_text("kept")
    assert unpack(files, tmp_path / "node") == first and (first / "marker").exists()  # reused, not rewritten
    assert [p.name for p in (tmp_path / "node").iterdir()] == [first.name]  # no temporary folders left


def test_the_worker_code_runs_where_torch_cannot_be_imported(tiny, sample_jpegs):
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import importlib.abc, sys

        class BlockTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError(name + " is blocked")
                return None

        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        from imgclf.bulk import decode, job, output, predictor, shipping, sources
        p = predictor.Predictor(shipping.pack({str(tiny)!r}), k=2, threads=1)
        out = p(decode.decode_batch({{"path": np.array([{str(sample_jpegs["chelsea"])!r}], dtype=object)}},
                                    p.engine.spec))
        print(out["indices"].shape, out["error"][0] == "")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 2) True"


# --- the output store --------------------------------------------------------------------------------


def row(path: str, model: str = "m", version: str = "1") -> dict:
    return {"path": path, "predictions": [{"index": 0, "label": "a", "score": 0.5}], "error": None,
            "model": model, "model_version": version}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_parts_are_merged_and_resume_knows_what_is_done(tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    store = ResultStore(out, "m", "1")
    with store.locked():
        store.write_part([row("a"), row("b")])
        store.write_part([{**row("c"), "predictions": None, "error": "no such file"}])
        (store.parts_dir / f".part-000002{suffix}.tmp").write_text("half a part")
    with store.locked():  # a new job: the half-written part of a killed one is dropped
        assert store.done() == {"a", "b", "c"}
        assert store.finish() == 3
    assert not store.parts_dir.exists()
    assert [r["path"] for r in read_rows(out)] == ["a", "b", "c"] and read_rows(out)[2]["error"] == "no such file"
    # A second job appends to the previous output.
    store = ResultStore(out, "m", "1")
    with store.locked():
        store.write_part([row("d")])
        assert store.done() == {"a", "b", "c", "d"}
        assert store.finish() == 4
    assert [r["path"] for r in read_rows(out)] == ["a", "b", "c", "d"]


def test_output_of_another_model_a_busy_output_and_a_bad_suffix_are_refused(tmp_path):
    out = tmp_path / "r.jsonl"
    store = ResultStore(out, "m", "1")
    with store.locked():
        store.write_part([row("a")])
        with pytest.raises(OutputError, match="another job is writing"), ResultStore(out, "m", "1").locked():
            pass
        store.finish()
    with pytest.raises(OutputError, match="holds answers of m 1, not of m 2"):
        ResultStore(out, "m", "2").done()
    with pytest.raises(OutputError, match=r"\.parquet or \.jsonl"):
        ResultStore(tmp_path / "r.csv", "m", "1")
    out.write_text("{not json\n")
    with pytest.raises(OutputError, match="is not a row"):
        ResultStore(out, "m", "1").done()


# --- the command line (no Ray started) ---------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["--out", "r.jsonl"], "--out: only with --ray"),
    (["--workers", "2", "--ray-address", "auto"], "--ray-address, --workers: only with --ray"),
    (["--ray"], "--ray needs --out"),
    (["--ray", "--out", "r.csv"], r"\.parquet or \.jsonl"),
    (["--ray", "--out", "r.jsonl", "--json"], "--json prints answers"),
    (["--ray", "--out", "r.jsonl", "--workers", "0"], "--workers must be at least 1"),
])
def test_option_errors_are_one_line_and_exit_2(capsys, sample_jpegs, argv, message):
    assert main(["predict", *argv, str(sample_jpegs["chelsea"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("imgclf: error: ")
    assert __import__("re").search(message, err), err


def test_torch_engine_with_ray_is_one_line_and_exit_2(capsys, sample_jpegs, tmp_path):
    argv = ["predict", "--ray", "--out", str(tmp_path / "r.jsonl"), "--engine", "torch", str(sample_jpegs["chelsea"])]
    assert main(argv) == 2
    assert capsys.readouterr().err == "imgclf: error: --ray runs a model package on ONNX Runtime or OpenVINO, not torch\n"


@pytest.mark.parametrize(("extra", "engine_name"), [([], "onnxruntime"), (["--engine", "openvino"], "openvino")])
def test_engine_and_precision_reach_the_actors(monkeypatch, tiny, sample_jpegs, tmp_path, extra, engine_name):
    """``--engine`` is chosen on the driver and the actors' factory builds that engine (Ray not started)."""
    import contextlib

    from imgclf.bulk import cluster
    from imgclf.bulk.job import BulkSummary

    if engine_name == "openvino":
        pytest.importorskip("openvino")
    seen = {}

    def fake_predict_bulk(locations, package, out, options, make_engine):
        seen["engine"] = make_engine(str(package.path), 1)
        return BulkSummary(total=1, skipped=0, predicted=1, errors=0, rows=1)

    monkeypatch.setattr(cluster, "import_ray", lambda: __import__("types").SimpleNamespace(exceptions=None))
    monkeypatch.setattr(cluster, "connected", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(bulk_job, "predict_bulk", fake_predict_bulk)
    argv = ["predict", "--ray", "--out", str(tmp_path / "r.jsonl"), "--model", str(tiny), *extra,
            str(sample_jpegs["chelsea"])]
    assert main(argv) == 0
    assert seen["engine"].engine_name == engine_name


def test_an_address_nothing_listens_on_is_refused_at_once():
    import socket

    from imgclf.bulk.cluster import RayConnectError, check_reachable

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(RayConnectError, match=f"no Ray cluster answers at {address}: "):
            check_reachable(address)
    with socket.socket() as s:  # a port something listens on passes
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_reachable(f"127.0.0.1:{s.getsockname()[1]}")
    check_reachable("auto")  # resolved by Ray itself


def test_missing_ray_is_one_line_with_the_install_hint(capsys, monkeypatch, sample_jpegs, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["predict", "--ray", "--out", str(tmp_path / "r.jsonl"), str(sample_jpegs["chelsea"])]) == 2
    assert capsys.readouterr().err == "imgclf: error: --ray needs Ray Data: pip install 'imgclf[ray]'\n"


# --- on a local Ray instance -------------------------------------------------------------------------


@needs_ray
@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_same_answers_as_predict_json(ray_instance, lite0_package, photos, tmp_path, capsys, suffix):
    out = tmp_path / f"results{suffix}"
    missing = str(tmp_path / "missing.jpg")
    argv = ["--model", str(lite0_package), "--batch-size", "4", str(photos), missing]
    assert main(["predict", "--ray", "--out", str(out), "--workers", "2", "--no-progress", *argv]) == 0
    assert f"{out}: 7 rows (5 answered now, 2 with an error, 0 answered before)" in capsys.readouterr().err
    assert main(["predict", "--json", *argv]) == 1
    expected = {r["file"]: r for r in json.loads(capsys.readouterr().out)}
    rows = {r["path"]: r for r in read_rows(out)}
    assert sorted(rows) == sorted(expected) and len(read_rows(out)) == 7
    for path, want in expected.items():
        got = rows[path]
        assert got["model"] == "efficientnet_lite0" and got["model_version"]
        if "error" in want:
            assert got["error"] == want["error"] and got["predictions"] is None
            continue
        assert got["error"] is None
        assert [p["index"] for p in got["predictions"]] == [p["index"] for p in want["predictions"]]
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
        np.testing.assert_allclose([p["score"] for p in got["predictions"]],
                                   [p["score"] for p in want["predictions"]], atol=1e-5, rtol=0)
    assert rows[str(photos / "sub/chelsea.jpg")]["predictions"][0]["index"] in CAT
    assert rows[missing]["error"] == "no such file"


@needs_ray
@pytest.mark.slow
def test_an_interrupted_job_keeps_its_rows_and_a_rerun_finishes_without_duplicates(ray_instance, tiny, photos,
                                                                                   monkeypatch, tmp_path):
    out = tmp_path / "results.jsonl"
    files = list_sources([str(photos)]) + [str(tmp_path / "missing.jpg")]
    package = load_package(tiny)
    real_rows = bulk_job.batch_rows
    answered: list[str] = []

    def interrupted_at_the_second_batch(*args, **kwargs):
        if answered:
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver
        rows = real_rows(*args, **kwargs)
        answered.extend(r["path"] for r in rows)
        return rows

    monkeypatch.setattr(bulk_job, "batch_rows", interrupted_at_the_second_batch)
    options = BulkOptions(batch_size=1, part_rows=100, progress=False)  # 7 files: 2 blocks, so 2 batches here
    with pytest.raises(KeyboardInterrupt):
        predict_bulk(files, package, str(out), options)
    kept = read_rows(next((tmp_path / "results.jsonl.parts").glob("part-*.jsonl")))
    # The first batch's rows were still in memory (part_rows=100): they are written on the way out.
    assert not out.exists() and 0 < len(answered) < 7 and [r["path"] for r in kept] == answered
    monkeypatch.setattr(bulk_job, "batch_rows", real_rows)

    summary = predict_bulk(files, package, str(out), options)
    assert (summary.skipped, summary.predicted + summary.errors, summary.rows) == (len(answered), 7 - len(answered), 7)
    rows = read_rows(out)
    assert sorted(r["path"] for r in rows) == sorted(files)  # every file once
    # Nothing left to do: a third run answers nothing and keeps the rows.
    again = predict_bulk(files, package, str(out), options)
    assert (again.skipped, again.predicted, again.errors, again.rows) == (7, 0, 0, 7)
    assert read_rows(out) == rows and not (tmp_path / "results.jsonl.parts").exists()


@needs_ray
@pytest.mark.slow
def test_glob_and_manifest_sources_through_the_cli(ray_instance, tiny, photos, tmp_path, capsys):
    (tmp_path / "list.txt").write_text("photos/sub/rocket.jpg\nphotos/sub/flower.jpg\n")
    out = tmp_path / "r.parquet"
    assert main(["predict", "--ray", "--model", str(tiny), "--out", str(out), "--top-k", "2", "--no-progress",
                 str(photos / "sub" / "c*.jpg"), str(tmp_path / "list.txt")]) == 0
    rows = read_rows(out)
    assert sorted(Path(r["path"]).name for r in rows) == ["chelsea.jpg", "china.jpg", "coffee.jpg", "flower.jpg",
                                                          "rocket.jpg"]
    assert all(len(r["predictions"]) == 2 and r["error"] is None for r in rows)
    assert "5 rows (5 answered now, 0 with an error, 0 answered before)" in capsys.readouterr().err


def engine_that_fails_to_load(package_dir: str, threads: int):
    raise RuntimeError(f"cannot load {package_dir}")


@needs_ray
@pytest.mark.slow
def test_a_failing_worker_stops_the_job_with_a_ray_error_and_the_output_stays_usable(ray_instance, tiny, photos,
                                                                                     tmp_path):
    import sys

    ray_instance.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    out = tmp_path / "results.parquet"
    files = list_sources([str(photos / "sub")])
    package = load_package(tiny)
    # What `imgclf predict --ray` turns into its one-line "the Ray job stopped: ..." error.
    with pytest.raises(ray_instance.exceptions.RayError, match="cannot load"):
        predict_bulk(files, package, str(out), BulkOptions(progress=False), make_engine=engine_that_fails_to_load)
    assert not out.exists()
    summary = predict_bulk(files, package, str(out), BulkOptions(progress=False))  # the lock was released
    assert summary.rows == 5 and summary.skipped == 0
