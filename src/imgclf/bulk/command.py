"""``imgclf predict --ray``: check the options, list the sources, find the package, run the job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgclf.errors import UserError


class BulkJobError(UserError):
    """The Ray job stopped (a node or worker lost beyond Ray's retries); its finished rows are kept."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``predict`` that only a Ray job takes."""
    g = p.add_argument_group("bulk prediction on Ray (needs: pip install 'imgclf[ray]'; see docs/bulk.md)")
    g.add_argument("--ray", action="store_true",
                   help="run on Ray: SOURCE is also a glob, a manifest (.txt, or .csv/.parquet with a 'path' "
                        "column) or a URI; answers go to --out; a re-run skips files already answered")
    g.add_argument("--ray-address", metavar="ADDRESS",
                   help="join this Ray cluster (ray://HOST:10001, or 'auto'); default: start a local instance")
    g.add_argument("--out", metavar="FILE", help="results file: .parquet or .jsonl (one row per file)")
    g.add_argument("--workers", type=int, default=1, help="ONNX Runtime actors (default 1)")
    g.add_argument("--worker-threads", type=int, default=1,
                   help="intra-op threads (and Ray CPUs) per actor (default 1)")


def validate(args: argparse.Namespace) -> None:
    """Refuse Ray-only options without ``--ray``, and bad values, before anything starts."""
    ray_only = {"--ray-address": args.ray_address, "--out": args.out}
    if not args.ray:
        given = [name for name, value in ray_only.items() if value is not None]
        given += [name for name, value, default in (("--workers", args.workers, 1),
                                                     ("--worker-threads", args.worker_threads, 1)) if value != default]
        if given:
            raise UserError(f"{', '.join(given)}: only with --ray")
        return
    if args.out is None:
        raise UserError("--ray needs --out FILE (.parquet or .jsonl)")
    if args.engine == "torch":
        raise UserError("--ray runs a model package on ONNX Runtime or OpenVINO, not torch")
    if args.json:
        raise UserError("--json prints answers; with --ray they go to --out")
    for name, value in (("--workers", args.workers), ("--worker-threads", args.worker_threads),
                        ("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1")


def run(args: argparse.Namespace) -> int:
    from imgclf.bulk.cluster import connected, import_ray, local_cpus
    from imgclf.bulk.job import BulkOptions, predict_bulk
    from imgclf.bulk.output import output_format
    from imgclf.bulk.predictor import ChosenEngine, EngineFactory, onnx_engine
    from imgclf.bulk.sources import list_sources
    from imgclf.engines.choice import choose
    from imgclf.resolve import ensure_package, package_engine_args
    from imgclf.zoo.registry import DEFAULT_MODEL

    output_format(Path(args.out))
    ray = import_ray()  # a missing extra is reported before a zoo model is exported
    locations = list_sources(args.images)
    package = ensure_package(args.model or DEFAULT_MODEL, weights=args.weights)
    make_engine: EngineFactory = onnx_engine
    if args.engine is not None or args.precision is not None:
        # Chosen here, once (an auto choice may measure a gate), so every actor runs the same engine.
        choice = choose(package, *package_engine_args(args.engine or "default", args.precision))
        print(f"imgclf: engine {choice.describe()}", file=sys.stderr)
        package, make_engine = choice.package, ChosenEngine(choice.engine, choice.precision)
    options = BulkOptions(workers=args.workers, threads=args.worker_threads, batch_size=args.batch_size,
                          k=args.top_k, progress=not args.no_progress and sys.stderr.isatty())
    with connected(args.ray_address, num_cpus=local_cpus(args.workers, args.worker_threads)):
        try:
            summary = predict_bulk(locations, package, args.out, options, make_engine)
        except ray.exceptions.RayError as exc:  # a lost node or worker, after Ray's own retries
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BulkJobError(f"the Ray job stopped: {first}; the rows answered so far are kept: run the same "
                               "command again to go on") from None
    print(f"{args.out}: {summary.rows} rows ({summary.predicted} answered now, {summary.errors} with an error, "
          f"{summary.skipped} answered before)", file=sys.stderr)
    return 0
