"""Bulk prediction: ``imgclf predict``'s batch path against ``imgclf predict --ray`` with 1 and 2 workers.

    python benchmarks/bulk_ray.py DATA_DIR --model PACKAGE [--rounds 2] [--batch-size 16] [--limit N]

DATA_DIR is searched recursively for images (e.g. the 10,000 CIFAR-10 test JPEGs). Each round runs
the three alternatives back to back on the same files: ``Classifier.predict_files`` (what
``imgclf predict`` runs: decode threads + one ONNX Runtime session over every core), then a Ray
job with 1 and with 2 workers (1 intra-op thread each) on a local Ray instance started once.
Reported: images/s of each (the Ray figure includes starting the actors, not ``ray.init``), the
ratio to ``imgclf predict``, the peak RSS and USS of each worker process (sampled every 0.2 s),
and whether the Ray answers equal ``imgclf predict``'s (top-1 index, largest score difference).
Last, the memory of the worker's code in a fresh process at batch sizes 1-64 (ONNX Runtime's arena
grows with the batch), and the driver's cost per row (results -> rows -> parts -> merged output).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import psutil

from imgclf.bulk.cluster import connected, local_cpus
from imgclf.bulk.job import BulkOptions, predict_bulk
from imgclf.classifier import load
from imgclf.images import image_files
from imgclf.package import load_package


class WorkerMemory:
    """Peak RSS and USS of every Ray Data worker process (``ray::MapWorker...``) while a job runs."""

    def __init__(self) -> None:
        self.peak: dict[int, tuple[int, int]] = {}
        self._before: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._before = {p.pid for p in psutil.process_iter() if _is_worker(p)}  # an earlier job's, exiting
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for proc in psutil.process_iter():
                if proc.pid in self._before or not _is_worker(proc):
                    continue
                try:
                    mem = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, uss = self.peak.get(proc.pid, (0, 0))
                self.peak[proc.pid] = (max(rss, mem.rss), max(uss, mem.uss))
            self._stop.wait(0.2)


def _is_worker(proc: psutil.Process) -> bool:
    try:
        return " ".join(proc.cmdline()).startswith("ray::MapWorker")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def run_predict(package: str, files: list[Path], batch_size: int) -> tuple[float, dict[str, tuple[int, float]]]:
    clf = load(package, batch_size=batch_size)
    t = time.perf_counter()
    results = clf.predict_files(files, k=5, progress=False)
    elapsed = time.perf_counter() - t
    answers = {os.path.abspath(r.file): (r.predictions[0].index, r.predictions[0].score)
               for r in results if r.predictions}
    return elapsed, answers


def run_ray(package: str, files: list[Path], batch_size: int, workers: int) -> tuple[float, list[tuple[int, int]],
                                                                                      dict[str, tuple[int, float]]]:
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp, WorkerMemory() as memory:
        out = str(Path(tmp) / "results.parquet")
        options = BulkOptions(workers=workers, threads=1, batch_size=batch_size, progress=False)
        t = time.perf_counter()
        summary = predict_bulk([os.path.abspath(f) for f in files], load_package(package), out, options)
        elapsed = time.perf_counter() - t
        assert summary.rows == len(files), summary
        rows = pq.read_table(out, columns=["path", "predictions"]).to_pylist()
    answers = {r["path"]: (r["predictions"][0]["index"], r["predictions"][0]["score"]) for r in rows if r["predictions"]}
    return elapsed, sorted(memory.peak.values()), answers


def engine_memory(package: str, files: list[Path], batch_size: int) -> tuple[int, int]:
    """Peak RSS and USS of a fresh process that runs the worker's code on three batches (no Ray)."""
    import numpy as np

    from imgclf.bulk.decode import decode_batch
    from imgclf.bulk.predictor import Predictor
    from imgclf.bulk.shipping import pack

    predictor = Predictor(pack(package), k=5, threads=1)
    for i in range(3):
        chunk = files[i * batch_size:(i + 1) * batch_size]
        predictor(decode_batch({"path": np.asarray([str(f) for f in chunk], dtype=object)}, predictor.engine.spec))
    mem = psutil.Process().memory_full_info()
    return mem.rss, mem.uss


def driver_cost(n: int = 10_000) -> dict[str, float]:
    """Microseconds per row of the driver's share: results -> rows -> part files -> the merged output."""
    import numpy as np

    from imgclf.bulk.job import batch_rows
    from imgclf.bulk.output import ResultStore

    rng = np.random.default_rng(0)
    labels = [f"class {i}" for i in range(1000)]
    batch = {"path": np.asarray([f"/mnt/photos/{i // 1000:04d}/{i:08d}.jpg" for i in range(n)], dtype=object),
             "indices": rng.integers(0, 1000, (n, 5)), "scores": rng.random((n, 5)),
             "error": np.asarray([""] * n, dtype=object)}
    cost = {}
    for suffix in (".parquet", ".jsonl"):
        with tempfile.TemporaryDirectory() as tmp:
            store = ResultStore(Path(tmp) / f"results{suffix}", "m", "1")
            t = time.perf_counter()
            with store.locked():
                for _ in range(3):
                    store.write_part(batch_rows(batch, labels, "m", "1"))
                store.finish()
            cost[suffix] = (time.perf_counter() - t) / (3 * n) * 1e6
    return cost


def compare(a: dict[str, tuple[int, float]], b: dict[str, tuple[int, float]]) -> str:
    same = sum(1 for k, (i, _) in a.items() if k in b and b[k][0] == i)
    diff = max((abs(a[k][1] - b[k][1]) for k in a if k in b), default=float("nan"))
    return f"top-1 equal {same}/{len(a)}, max top-1 score diff {diff:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--model", required=True, help="a model package folder")
    ap.add_argument("--rounds", type=int, default=2, help="0: only the memory by batch size and the driver's cost")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    args = ap.parse_args()
    files = image_files(args.data_dir)
    if args.limit:
        files = files[:args.limit]
    print(f"{len(files)} images, batch size {args.batch_size}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    t = time.perf_counter()
    with connected(None, num_cpus=local_cpus(2, 1)) if args.rounds else nullcontext():
        if args.rounds:
            print(f"ray.init: {time.perf_counter() - t:.1f} s", flush=True)
        for n in range(1, args.rounds + 1):
            base, reference = run_predict(args.model, files, args.batch_size)
            print(f"round {n}: imgclf predict      {len(files) / base:7.1f} img/s ({base:.1f} s)", flush=True)
            for workers in (1, 2):
                elapsed, peaks, answers = run_ray(args.model, files, args.batch_size, workers)
                mem = ", ".join(f"RSS {rss / 2**20:.0f} MiB / USS {uss / 2**20:.0f} MiB" for rss, uss in peaks)
                print(f"round {n}: ray, {workers} worker(s)  {len(files) / elapsed:7.1f} img/s ({elapsed:.1f} s, "
                      f"x{base / elapsed:.2f} of predict); per worker: {mem}; {compare(reference, answers)}",
                      flush=True)
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for size in (1, 16, 32, 64):
            rss, uss = pool.apply(engine_memory, (args.model, files, size))
            print(f"one worker's code at batch {size:2d}: RSS {rss / 2**20:.0f} MiB / USS {uss / 2**20:.0f} MiB",
                  flush=True)
    for suffix, us in driver_cost().items():
        print(f"driver: {us:.0f} us per row ({suffix})", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
