"""Corrections per second the feedback store takes: SQLite (WAL, synchronous=FULL) beside PostgreSQL.

    python benchmarks/feedback_store.py IMAGE_FOLDER [--n 400] [--threads 1 4] [--pg-url URL]

Each run records ``--n`` corrections (distinct JPEGs from IMAGE_FOLDER, e.g. the CIFAR-10 JPEG
folders) into a fresh store through :meth:`FeedbackStore.record` from ``--threads`` threads: the
path a server's request takes after decoding (image file written and fsynced, one transaction
committed durably). Without ``--pg-url`` a throwaway PostgreSQL cluster (fsync on) is started when
Debian's postgresql is installed (see tests/pg_support.py), else PostgreSQL is left out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from imgclf.feedback.store import FeedbackStore
from imgclf.images import image_files


def run(store: FeedbackStore, images: list[bytes], threads: int) -> float:
    it = iter(range(len(images)))
    lock = threading.Lock()

    def work(k: int) -> None:
        while True:
            with lock:
                i = next(it, None)
            if i is None:
                return
            store.record(model="bench", version="1", label="cat", client=f"c{k}", image=images[i])

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", type=Path)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--pg-url", help="a PostgreSQL server where databases may be created")
    args = ap.parse_args()
    images = [f.read_bytes() for f in image_files(args.images)[: args.n * len(args.threads) * 2]]
    if len(images) < args.n * len(args.threads) * 2:
        sys.exit(f"need {args.n * len(args.threads) * 2} images in {args.images}, found {len(images)}")
    with ExitStack() as stack:
        backends: list[tuple[str, str | None]] = [("sqlite", None)]
        server = args.pg_url
        if server is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            try:
                from pg_support import throwaway_cluster

                server = stack.enter_context(throwaway_cluster(durable=True))  # fsync on, as SQLite's
            except (ImportError, RuntimeError) as exc:
                print(f"PostgreSQL left out: {exc}")
        if server is not None:
            from pg_support import create_database

            backends.append(("postgresql", server))
        print(f"{'backend':12} {'threads':>7} {'corrections/s':>14}")
        batch = iter(range(0, len(images), args.n))
        for threads in args.threads:
            for name, url in backends:
                start = next(batch)
                db = create_database(url)[0] if url else None
                with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
                    store = FeedbackStore.open(db, Path(tmp))
                    rate = run(store, images[start:start + args.n], threads)
                    store.close()
                print(f"{name:12} {threads:>7} {rate:>14.1f}")


if __name__ == "__main__":
    main()
