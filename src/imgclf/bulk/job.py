"""A bulk prediction job on Ray Data: locations -> decode stage -> a pool of engine actors -> result parts.

The pipeline streams (Ray Data's backpressure bounds the blocks in flight), and the driver turns
each finished batch into rows and writes a part file every ``part_rows`` rows or ``part_seconds``
seconds. Files are read by the workers, not the driver, so on
a cluster the paths must be visible from every node (a shared filesystem or an object store).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imgclf.bulk.cluster import import_ray, quiet_data
from imgclf.bulk.decode import decode_batch
from imgclf.bulk.output import ResultStore, Row
from imgclf.bulk.predictor import EngineFactory, Predictor, onnx_engine
from imgclf.bulk.shipping import pack
from imgclf.package import ModelPackage


@dataclass(frozen=True)
class BulkOptions:
    workers: int = 1  # engine actors
    threads: int = 1  # intra-op threads (and Ray CPUs) per actor
    batch_size: int = 16
    k: int = 5
    part_rows: int = 1000
    part_seconds: float = 60.0
    progress: bool = True


@dataclass(frozen=True)
class BulkSummary:
    total: int  # distinct locations the sources named
    skipped: int  # already answered by an earlier run
    predicted: int  # answered now, with predictions
    errors: int  # answered now, with an error
    rows: int  # rows in the output at the end


def predict_bulk(locations: Sequence[str], package: ModelPackage, out: str, options: BulkOptions = BulkOptions(),
                 make_engine: EngineFactory = onnx_engine) -> BulkSummary:
    """Answer every location not yet in ``out`` and leave one row per location there.

    Ray must be initialised (:func:`imgclf.bulk.cluster.connected`).
    """
    from tqdm import tqdm

    ray = import_ray()
    quiet_data(ray)
    store = ResultStore(out, package.name, package.meta.version)
    labels = package.labels
    with store.locked():
        done = store.done()
        todo = [loc for loc in locations if loc not in done]
        predicted = errors = 0
        if todo:
            buffer: list[Row] = []
            last_part = time.monotonic()
            with tqdm(total=len(todo), unit="img", disable=not options.progress, file=sys.stderr) as bar:
                try:
                    for batch in _dataset(ray, todo, package, options, make_engine).iter_batches(
                            batch_size=None, batch_format="numpy"):
                        rows = batch_rows(batch, labels, package.name, package.meta.version)
                        buffer.extend(rows)
                        errors += sum(1 for r in rows if r["error"] is not None)
                        predicted += sum(1 for r in rows if r["error"] is None)
                        bar.update(len(rows))
                        if len(buffer) >= options.part_rows or time.monotonic() - last_part >= options.part_seconds:
                            store.write_part(buffer)
                            buffer, last_part = [], time.monotonic()
                finally:  # interrupted or failed: the rows already answered are kept for the next run
                    if buffer:
                        store.write_part(buffer)
        rows_out = store.finish()
    return BulkSummary(total=len(locations), skipped=len(locations) - len(todo), predicted=predicted,
                       errors=errors, rows=rows_out)


def _dataset(ray: Any, todo: list[str], package: ModelPackage, options: BulkOptions,  # noqa: ANN401
             make_engine: EngineFactory) -> Any:  # noqa: ANN401 - ray.data.Dataset (Ray is imported lazily)
    # Blocks of a few batches: small enough to spread over the decode tasks and start the actors
    # early, large enough that per-block overhead stays small.
    blocks = max(min(len(todo), options.workers), math.ceil(len(todo) / (options.batch_size * 4)))
    ds = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
    # The decode stage asks for the actors' CPUs, so Ray Data fuses it into them: a worker decodes a
    # batch and runs it in one process, and the pixels never cross the object store.
    ds = ds.map_batches(decode_batch, fn_kwargs={"spec": package.spec}, batch_size=options.batch_size,
                        batch_format="numpy", num_cpus=options.threads)
    return ds.map_batches(
        Predictor, fn_constructor_kwargs={"package": pack(package.path), "k": options.k,
                                          "threads": options.threads, "make_engine": make_engine},
        batch_size=options.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=options.threads)


def batch_rows(batch: dict[str, Any], labels: Sequence[str], model: str, version: str) -> list[Row]:
    """A finished batch of the actors -> output rows (labels are looked up here, once, not shipped)."""
    rows: list[Row] = []
    for path, idx, scores, error in zip(batch["path"], batch["indices"], batch["scores"], batch["error"],
                                        strict=True):
        if error:
            rows.append({"path": str(path), "predictions": None, "error": str(error), "model": model,
                         "model_version": version})
        else:
            preds = [{"index": int(i), "label": labels[int(i)], "score": float(s)}
                     for i, s in zip(idx, scores, strict=True)]
            rows.append({"path": str(path), "predictions": preds, "error": None, "model": model,
                         "model_version": version})
    return rows
